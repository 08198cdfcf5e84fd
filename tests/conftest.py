"""Tests run on CPU with 8 fake devices so that sharding code paths are exercised.

Session fixtures hold what several test files need and is slow to make on 2 cores: the
tiny model's random parameters (one jitted init, ~40 CPU-seconds) and a checkpoint of them.
"""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session', autouse=True)
def shared_compile_cache(tmp_path_factory):
  """One persistent compilation cache for the scripts of every test (`script_runs.env`): CI's
  end-to-end tests compile the same micro train and distill steps in dozens of subprocesses."""
  from tests import script_runs
  folder = tmp_path_factory.mktemp('jax_cache_shared')
  os.environ[script_runs.SHARED_CACHE_VAR] = str(folder)
  yield folder
  os.environ.pop(script_runs.SHARED_CACHE_VAR, None)


@pytest.fixture(scope='session')
def tiny_params():
  """Unboxed random parameters of configs/tiny.py's model (seed 0); treat as read-only."""
  import flax.linen as nn
  import jax
  from axturbo.models import audiox
  from configs import tiny
  m = tiny.model_config()
  model = audiox.build_model(m)
  return jax.jit(lambda k: nn.unbox(audiox.init_params(model, m, k)))(jax.random.PRNGKey(0))


@pytest.fixture(scope='session')
def tiny_checkpoint(tiny_params, tmp_path_factory):
  """An inference checkpoint (kind 'student') of `tiny_params`, with a non-zero
  `empty_visual_feat` (a random init leaves it 0, which would hide the empty-video path)."""
  import jax
  from axturbo.runtime import checkpoints
  from configs import tiny
  params = dict(tiny_params)
  params['video'] = dict(params['video'])
  params['video']['empty_visual_feat'] = jax.random.normal(
      jax.random.PRNGKey(1), params['video']['empty_visual_feat'].shape)
  directory = tmp_path_factory.mktemp('tiny_ckpt') / 'student'
  checkpoints.save_params(directory, params, tiny.model_config(), {'kind': 'student'})
  return directory


@pytest.fixture(scope='session')
def tiny_teacher_checkpoint(tiny_checkpoint):
  """`tiny_checkpoint` recorded as a teacher (meta.json kind 'teacher'), sharing its files."""
  import shutil
  from axturbo.runtime import checkpoints
  directory = tiny_checkpoint.parent / 'teacher'
  shutil.copytree(tiny_checkpoint, directory)
  (directory / checkpoints.META_FILE).write_text('{"kind": "teacher"}')
  return directory



@pytest.fixture(scope='session')
def micro_student_checkpoint(tmp_path_factory):
  """An inference checkpoint (kind 'student') of tests/micro_train_config.py's model, random
  weights (seed 0): for the command-line tests that need any checkpoint, fast."""
  import flax.linen as nn
  import jax
  from axturbo.models import audiox
  from axturbo.runtime import checkpoints
  from tests import micro_train_config
  m = micro_train_config.get_config().model
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(
      jax.random.PRNGKey(0))
  return checkpoints.save_params(tmp_path_factory.mktemp('micro') / 'student', params, m,
                                 {'kind': 'student'})

def pytest_collection_modifyitems(config, items):
  """`gpu` tests skip where no accelerator is visible (this file pins JAX to the CPU unless
  JAX_PLATFORMS says otherwise)."""
  del config
  if os.environ.get('JAX_PLATFORMS', 'cpu') == 'cpu':
    skip = pytest.mark.skip(reason='needs an accelerator (set JAX_PLATFORMS)')
    for item in items:
      if 'gpu' in item.keywords:
        item.add_marker(skip)

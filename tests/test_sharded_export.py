"""Sharded exports: `checkpoints.export` writes the devices' shards (no gather on the host) and
the export restores onto any mesh: 1 device, or 8 devices split another way between fsdp and
tensor, through the three readers (distill's teacher load, train's `init_from` target, and
`Generator.load`). Exports written before (host NumPy trees) still load the same way."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from axturbo.distill import state as distill_state
from axturbo.models import audiox
from axturbo.runtime import checkpoints
from axturbo.runtime import sharding
from tests import micro_train_config

pytestmark = pytest.mark.slow   # a jitted micro init and five restores, ~1 min on 2 cores


def _mesh(shape, n=8):
  return sharding.make_mesh(shape, jax.devices()[:n])


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  """The micro AudioX initialised in shards on a (1, 4, 2) mesh, exported; and the same values
  saved as host NumPy (the format before)."""
  m = micro_train_config.get_config().model
  model = audiox.build_model(m)
  boxed = distill_state.abstract_params(model, m)
  _, shardings = sharding.abstract_with_shardings(boxed, _mesh((1, 4, 2)))
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(model, m, k)),
                   out_shardings=shardings)(jax.random.key(3))
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(params))
  root = tmp_path_factory.mktemp('exports')
  sharded = checkpoints.export(root / 'sharded', params, m, {'kind': 'teacher', 'step': 5})
  host = jax.tree.map(np.asarray, params)
  old = checkpoints.save_params(root / 'host', host, m, {'kind': 'teacher', 'step': 5})
  return m, model, host, {'sharded': sharded, 'host': old}


def test_export_records_the_devices_shards(written):
  _, _, _, out = written
  # orbax wrote jax.Arrays (their shardings file) rather than one host array per leaf.
  assert (out['sharded'] / checkpoints.PARAMS_DIR / '_sharding').exists()
  assert checkpoints.load_meta(out['sharded'])['step'] == 5


@pytest.mark.parametrize('which', ['sharded', 'host'])
@pytest.mark.parametrize('shape,n', [((1, 2, 4), 8), ((2, 1, 4), 8), ((1, 1, 1), 1)])
def test_restores_onto_any_mesh(written, which, shape, n):
  m, model, host, out = written
  mesh = _mesh(shape, n)
  # distill.py --teacher
  teacher, _ = distill_state.load_teacher(out[which], model, m, mesh,
                                          sharding.mesh_rules(micro_train_config.get_config().mesh))
  for x in jax.tree.leaves(teacher):
    assert x.sharding.mesh.shape == mesh.shape
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, teacher), host)
  # --config.train.init_from: train.py restores into its abstract state's params.
  target, _ = sharding.abstract_with_shardings(distill_state.abstract_params(model, m), mesh)
  params = checkpoints.load_params(out[which], target=target, partial=True)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), host)


@pytest.mark.parametrize('which', ['sharded', 'host'])
def test_generator_loads_either_format(written, which):
  from axturbo.generation.generate import Generator
  _, _, host, out = written
  gen = Generator.load(out[which], kind='teacher')
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, gen.params),
               audiox.inference_params(host))   # the stored tree in the inference layout

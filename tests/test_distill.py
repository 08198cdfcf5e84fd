"""distill.py on the micro AudioX, 8 CPU devices (fsdp): each step kind moves exactly its own
networks, the teacher load fails loudly on a wrong or missing teacher, SIGKILL, SIGTERM and
resume are bit-exact, and the exported student loads in `Generator` and produces audio in 4
steps."""
import json
import signal

import flax.linen as nn
import jax
import numpy as np
import pytest

from axturbo.runtime import checkpoints
from axturbo.runtime import preemption
from axturbo.distill import state as state_lib
from axturbo.distill import step as step_lib
from axturbo.models import audiox
from axturbo.data import synthetic as synthetic_data
from axturbo.runtime import sharding
from tests import micro_distill_config
from tests import script_runs

CONFIG = str(script_runs.REPO / 'tests' / 'micro_distill_config.py')
STEPS, EVERY = 8, 2   # checkpoints at 2, 4, 6: room for a SIGKILL and a SIGTERM


def _config():
  c = micro_distill_config.get_config()
  c.data.batch_size = c.distill.batch_size
  return c


def _save_teacher(directory, config, seed=7):
  model = audiox.build_model(config.model)
  params = nn.unbox(audiox.init_params(model, config.model, jax.random.key(seed)))
  return checkpoints.save_params(directory, params, config.model, {'kind': 'teacher'})


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  return _save_teacher(tmp_path_factory.mktemp('teacher') / 'ckpt', _config())


@pytest.fixture(scope='module')
def setup(teacher_dir):
  c = _config()
  mesh = sharding.make_mesh(c.mesh.shape)
  rules = sharding.mesh_rules(c.mesh)
  model = audiox.build_model(c.model)
  teacher, t_shard = state_lib.load_teacher(teacher_dir, model, c.model, mesh, rules)
  txs = step_lib.make_optimizers(c.distill)
  init_fn = state_lib.make_init_fn(model, c, *txs)
  _, shardings = state_lib.abstract_state(init_fn, model, c, mesh, rules)
  state = state_lib.init_state(init_fn, shardings, c.seed, teacher, c.distill)
  jitted = step_lib.jit_steps(model, txs, c, mesh, shardings, t_shard)
  batch = sharding.global_batch(next(synthetic_data.make_iterator(c)), mesh)
  return c, teacher, state, jitted, jitted['inputs'](state, teacher, batch)


def _np(tree):
  return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def _moved(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _same(a, b, what):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y, err_msg=what), a, b)


@pytest.mark.slow
def test_steps_move_only_their_networks(setup):
  c, teacher, state, jitted, inputs = setup
  teacher0 = _np(teacher)
  before = _np(state)
  # Student init is an exact copy of the teacher's MAF + trunk.
  _same(before.student, _np(state_lib.trainable_part(teacher, c.distill)), 'student init')

  state, m = jitted['student'](state, teacher, inputs, True)
  after_s = _np(state)
  assert np.isfinite(float(m['loss_student'])) and bool(m['student_finite'])
  assert float(m['g_abs_mean']) > 0   # the teacher's CFG score differs from the fake's
  assert _moved(before.student, after_s.student) and _moved(before.ema, after_s.ema)
  _same(before.fake, after_s.fake, 'student step moved the fake')
  _same(before.heads, after_s.heads, 'student step moved the heads')
  _same(before.fake_opt, after_s.fake_opt, 'student step touched the fake optimizer')
  assert int(after_s.step) == 1 and int(after_s.student_updates) == 1
  assert int(after_s.fake_updates) == 0

  state, m = jitted['fake'](state, teacher, inputs, True)
  after_f = _np(state)
  assert np.isfinite(float(m['loss_fake'])) and bool(m['fake_finite'])
  assert _moved(after_s.fake, after_f.fake) and _moved(after_s.heads, after_f.heads)
  _same(after_s.student, after_f.student, 'fake step moved the student')
  _same(after_s.ema, after_f.ema, 'fake step moved the EMA')
  _same(after_s.student_opt, after_f.student_opt, 'fake step touched the student optimizer')
  assert int(after_f.step) == 2 and int(after_f.fake_updates) == 1
  _same(teacher0, _np(teacher), 'the teacher moved')


@pytest.mark.slow
def test_teacher_guard(tmp_path, teacher_dir):
  c = _config()
  mesh = sharding.make_mesh(c.mesh.shape)
  model = audiox.build_model(c.model)
  with pytest.raises(FileNotFoundError, match='no such checkpoint'):
    state_lib.load_teacher(tmp_path / 'missing', model, c.model, mesh)
  # A teacher made for another model: model_config.json disagrees (the key is named).
  other = _config()
  other.model.trunk.depth = 3
  _save_teacher(tmp_path / 'deeper', other)
  with pytest.raises(ValueError, match='trunk.depth'):
    state_lib.load_teacher(tmp_path / 'deeper', model, c.model, mesh)
  # Right config file, wrong parameters (a tree from another model): refused, not half-loaded.
  bad = tmp_path / 'mislabelled'
  _save_teacher(bad, other)
  (bad / checkpoints.CONFIG_FILE).write_text((teacher_dir / checkpoints.CONFIG_FILE).read_text())
  with pytest.raises(ValueError, match='mislabelled'):
    state_lib.load_teacher(bad, model, c.model, mesh)
  # A config with a mismatched discriminator is refused before anything runs.
  c.distill.disc_num_blocks = 1
  with pytest.raises(ValueError, match='disc_num_blocks'):
    state_lib.check_distill_config(c)


# ---------------------------------------------------------------------------------------------
# distill.py end to end (subprocesses).

def _distill(workdir, tmp, teacher):
  return script_runs.start('distill.py', workdir, tmp, f'--config={CONFIG}',
                           f'--teacher={teacher}', f'--config.distill.total_steps={STEPS}',
                           f'--config.distill.checkpoint_every={EVERY}',
                           f'--config.distill.log_every={EVERY}')


def _wait(proc, workdir, timeout=900):
  script_runs.wait_ok(proc, workdir, timeout)


@pytest.mark.e2e
def test_sigkill_sigterm_resume_is_bit_exact_and_export_generates(tmp_path, teacher_dir):
  """SIGKILL, resume, SIGTERM (one process: saves the next step boundary, exits 75), resume:
  the export equals the uninterrupted run's."""
  ref = tmp_path / 'reference'
  _wait(_distill(ref, tmp_path, teacher_dir), ref)
  workdir = tmp_path / 'killed'
  proc = _distill(workdir, tmp_path, teacher_dir)
  script_runs.sigkill_after_first_checkpoint(proc, workdir, timeout=900)
  proc = _distill(workdir, tmp_path, teacher_dir)
  script_runs.wait_for_checkpoint(proc, workdir, timeout=900,
                                  after=max(script_runs.checkpoint_steps(workdir)))
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=600) == preemption.EXIT_PREEMPTED
  (step, line), = script_runs.stop_lines(workdir)
  assert line.startswith('stopped by SIGTERM') and step < STEPS, line
  assert max(script_runs.checkpoint_steps(workdir)) == step
  _wait(_distill(workdir, tmp_path, teacher_dir), workdir)
  assert 'resumed from step' in script_runs.log_path(workdir).read_text()
  load = lambda w: jax.tree.map(np.asarray, checkpoints.load_params(w / 'export'))
  jax.tree.map(np.testing.assert_array_equal, load(workdir), load(ref))

  meta = json.loads((ref / 'export' / checkpoints.META_FILE).read_text())
  assert meta['kind'] == 'student' and meta['step'] == STEPS and meta['ema']
  from axturbo.generation import Generator, Request, SamplerOptions
  gen = Generator.load(ref / 'export')
  assert gen.kind == 'student'
  out = gen.generate([Request(text='a tone of class 3')], SamplerOptions(steps=4, seed=0))[0]
  assert out.meta['steps'] == 4 and out.meta['nfe'] == 4
  assert out.waveform.shape == (gen.output_samples, 2) and np.all(np.isfinite(out.waveform))
  assert np.std(out.waveform) > 0

"""Distilling an adapted student (distill.lora + distill.init_student_from) on the micro AudioX,
8 CPU devices (fsdp): student and fake steps move only their adapters (and the heads), never
a base weight; zero-B adapters are the base student exactly; the merged export equals the
student export with the adapter file applied at load (same samples from `Generator`); bad
settings are refused with one line naming the flag; distill.py resumes and writes both exports;
a teacher adapter merges at load (distill.teacher_lora); init_student_from alone starts a full
student from the export.
"""
import functools
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from axturbo.data import synthetic as synthetic_data
from axturbo.distill import state as state_lib
from axturbo.distill import step as step_lib
from axturbo.models import audiox
from axturbo.runtime import checkpoints, lora, sharding
from tests import micro_distill_config
from tests import script_runs

CONFIG = str(script_runs.REPO / 'tests' / 'micro_distill_config.py')
TARGETS = ('trunk/layers/*/q', 'trunk/layers/*/v', 'trunk/layers/*/attn_out',
           'trunk/layers/*/ffn_w1', 'maf/fusion_layers/linear1')
LORA_FLAGS = ('--config.distill.lora.enabled=True', '--config.distill.lora.rank=2',
              '--config.distill.lora.alpha=4.0', f'--config.distill.lora.targets={TARGETS!r}'
              .replace(' ', ''))


def _config(student=''):
  c = micro_distill_config.get_config()
  c.data.batch_size = c.distill.batch_size
  c.distill.lora.update(enabled=True, rank=2, alpha=4.0, targets=TARGETS)
  c.distill.init_student_from = str(student)
  return c


@functools.lru_cache(maxsize=None)
def _params(seed):
  m = _config().model
  return jax.tree.map(np.asarray, jax.jit(
      lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(jax.random.key(seed)))


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  """(teacher, student export): different weights, the same model config."""
  root = tmp_path_factory.mktemp('lora_distill')
  m = _config().model
  teacher = checkpoints.save_params(root / 'teacher', _params(7), m, {'kind': 'teacher'})
  student = checkpoints.export(root / 'student', _params(3), m, {'kind': 'student', 'step': 5})
  return teacher, student


def _np(tree):
  return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def _same(a, b, what):
  checkpoints.assert_same_tree(_np(a), _np(b), what)


def _b_leaves(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)
          if jax.tree_util.keystr(p).endswith("'lora_b']")}


# ------------------------------------------------------------------------------ refusals

def test_bad_settings_are_one_line_naming_the_flag(tmp_path):
  # Stand-ins: every refusal here comes before any parameter is read.
  m, tiny = _config().model, {'x': np.zeros(1)}
  teacher = checkpoints.save_params(tmp_path / 'teacher', tiny, m, {'kind': 'teacher'})
  student = checkpoints.export(tmp_path / 'student', tiny, m, {'kind': 'student', 'step': 5})
  c = _config()   # LoRA on, no student export
  with pytest.raises(ValueError, match=r'^--config\.distill\.lora\.enabled=True needs '
                     r'--config\.distill\.init_student_from'):
    state_lib.check_distill_config(c)
  state_lib.check_distill_config(_config(student))
  for field, value in (('rank', 0), ('alpha', -1.0), ('dropout', 1.0), ('targets', ())):
    bad = _config(student)
    bad.distill.lora[field] = value
    with pytest.raises(ValueError, match=f'^--config.distill.lora.{field}='):
      state_lib.check_distill_config(bad)
  # A student export made for another model, a teacher, an adapter: refused, naming the flag.
  c = _config(student)
  mesh = sharding.make_mesh(c.mesh.shape)
  model = audiox.build_model(c.model)
  other = _config()
  other.model.trunk.depth = 3
  deeper = checkpoints.save_params(tmp_path / 'deeper', {'x': np.zeros(1)}, other.model,
                                   {'kind': 'student'})
  adapter = tmp_path / 'adapter'
  lora.save_adapter(adapter, {'a': np.zeros(1)}, c.model, c.distill.lora,
                    lora.base_identity(student))
  for directory, needle in ((deeper, 'trunk.depth: checkpoint 3 vs config 2'),
                            (teacher, 'is a teacher'), (adapter, 'a LoRA adapter')):
    with pytest.raises(ValueError) as e:
      state_lib.load_student_start(directory, model, c.model, mesh)
    message = str(e.value)
    assert message.startswith(f'--config.distill.init_student_from {directory}')
    assert needle in message and '\n' not in message, message
  # Targets outside the distilled subtrees match no kernel there.
  c.distill.lora.targets = ('video/*',)
  with pytest.raises(ValueError, match=r"^distill.lora.targets: 'video/\*' matches no"):
    state_lib.make_init_fn(model, c, *step_lib.make_optimizers(c.distill))


@pytest.mark.slow
def test_teacher_adapter_merged_at_load(dirs, tmp_path):
  """distill.teacher_lora: the teacher with the adapter merged in its shards equals the adapter
  applied on the host (what `python -m axturbo.lora merge` writes); another base is refused."""
  teacher_dir, student_dir = dirs
  c = _config(student_dir)
  mesh = sharding.make_mesh(c.mesh.shape)
  model = audiox.build_model(c.model)
  boxed = jax.eval_shape(lambda k: audiox.init_params(model, c.model, k), jax.random.key(0))
  keys = iter(jax.random.split(jax.random.key(5), 100))
  adapters = jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(0.1 * jax.random.normal(next(keys), x.shape)
                              if jax.tree_util.keystr(p).endswith("'lora_b']") else x),
      nn.unbox(lora.init_adapters(jax.random.key(1), boxed, c.distill.lora)))
  good = lora.save_adapter(tmp_path / 'good', adapters, c.model, c.distill.lora,
                           lora.base_identity(teacher_dir))
  bad = lora.save_adapter(tmp_path / 'bad', adapters, c.model, c.distill.lora,
                          lora.base_identity(student_dir))
  teacher, shardings = state_lib.load_teacher(teacher_dir, model, c.model, mesh)
  merged = state_lib.apply_teacher_adapter(teacher, shardings, good, teacher_dir)
  assert jax.tree.map(lambda x: x.sharding, merged) == shardings
  _same(lora.apply(_params(7), adapters, lora.scale(c.distill.lora)), merged,
        'teacher + adapter in shards vs on the host')
  with pytest.raises(ValueError) as e:
    state_lib.apply_teacher_adapter(teacher, shardings, bad, teacher_dir)
  message = str(e.value)
  assert message.startswith('--config.distill.teacher_lora: ') and '\n' not in message
  assert str(student_dir) in message and str(teacher_dir) in message, message


# ------------------------------------------------------------------- steps on 8 devices

@pytest.fixture(scope='module')
def setup(dirs):
  teacher_dir, student_dir = dirs
  c = _config(student_dir)
  mesh = sharding.make_mesh(c.mesh.shape)
  rules = sharding.mesh_rules(c.mesh)
  model = audiox.build_model(c.model)
  teacher, t_shard = state_lib.load_teacher(teacher_dir, model, c.model, mesh, rules)
  start, _ = state_lib.load_student_start(student_dir, model, c.model, mesh, rules)
  txs = step_lib.make_optimizers(c.distill)
  init_fn = state_lib.make_init_fn(model, c, *txs)
  abstract, shardings = state_lib.abstract_state(init_fn, model, c, mesh, rules)
  state = state_lib.init_state(init_fn, shardings, c.seed, teacher, c.distill, start)
  jitted = step_lib.jit_steps(model, txs, c, mesh, shardings, t_shard)
  batch = sharding.global_batch(next(synthetic_data.make_iterator(c)), mesh)
  frozen = state_lib.frozen_part(start, c.distill)
  inputs = jitted['inputs'](state, teacher, batch)
  # The steps donate `state`; a host copy of it for the tests that run after them.
  return c, teacher, state, abstract, jitted, inputs, frozen, _np(state)


@pytest.mark.slow
def test_steps_move_only_adapters_and_heads(setup):
  c, teacher, state, abstract, jitted, inputs, _, _ = setup
  d = c.distill
  teacher0, before = _np(teacher), _np(state)
  student_base = state_lib.trainable_part(_params(3), d)
  # The student's base is the student export, the fake holds adapters only (its base: the
  # teacher), every B is zero; optimizers and EMA cover the adapters (and heads) alone.
  _same(student_base, state_lib.split_student(before.student, d)[1], 'student base vs export')
  assert set(before.fake) == {lora.ADAPTERS} and set(before.ema) == {lora.ADAPTERS}
  assert not any(np.any(x) for x in _b_leaves((before.student, before.fake)).values())
  adapter_shapes = [x.shape for x in jax.tree.leaves(before.student[lora.ADAPTERS])]
  assert sorted(x.shape for x in jax.tree.leaves(before.student_opt) if x.ndim) == sorted(
      adapter_shapes * 2)
  head_shapes = [x.shape for x in jax.tree.leaves(before.heads)]
  assert sorted(x.shape for x in jax.tree.leaves(before.fake_opt) if x.ndim) == sorted(
      (adapter_shapes + head_shapes) * 2)
  # Adapters shard by their kernel's logical names: A's input axis 'embed' over fsdp.
  a = abstract.student[lora.ADAPTERS]['trunk']['layers']['block_0']['q']['lora_a']
  assert a.shape == (32, 2) and a.sharding.spec[0] == 'fsdp', a.sharding.spec

  state, m = jitted['student'](state, teacher, inputs, True)
  state, m = jitted['student'](state, teacher, inputs, True)
  after_s = _np(state)
  assert bool(m['student_finite']) and int(after_s.student_updates) == 2
  _same(student_base, state_lib.split_student(after_s.student, d)[1], 'student base moved')
  for k, v in _b_leaves(after_s.student).items():
    assert np.any(v), f'student {k} did not move'
  _same(before.fake, after_s.fake, 'student step moved the fake adapters')
  _same(before.heads, after_s.heads, 'student step moved the heads')

  state, m = jitted['fake'](state, teacher, inputs, True)
  after_f = _np(state)
  assert bool(m['fake_finite']) and int(after_f.fake_updates) == 1
  for k, v in _b_leaves(after_f.fake).items():
    assert np.any(v), f'fake {k} did not move'
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(after_s.heads),
                                                      jax.tree.leaves(after_f.heads)))
  _same(after_s.student, after_f.student, 'fake step moved the student')
  _same(after_s.ema, after_f.ema, 'fake step moved the EMA')
  _same(teacher0, teacher, 'the teacher (the fake base) moved')


@pytest.mark.slow
def test_zero_adapters_are_the_base_student(setup, dirs, tmp_path):
  c, teacher, _, _, _, _, frozen, state = setup
  _, student_dir = dirs
  params = _np(state_lib.student_export_params(state, teacher, c.distill, frozen))
  _same(checkpoints.load_params(student_dir), params, 'B = 0 export vs the student export')
  zero = checkpoints.export(tmp_path / 'zero', params, c.model, {'kind': 'student', 'step': 0})
  from axturbo.generation import Generator, Request, SamplerOptions
  request, options = Request(text='a tone of class 3'), SamplerOptions(steps=2, seed=0)
  [a] = Generator.load(zero).generate(request, options)
  [b] = Generator.load(student_dir).generate(request, options)
  np.testing.assert_array_equal(a.waveform, b.waveform)


# ------------------------------------------------------------------------------ distill.py

@pytest.mark.e2e
def test_distill_py_lora_resumes_and_exports_adapter_and_merged_student(dirs, tmp_path):
  teacher_dir, student_dir = dirs
  workdir = tmp_path / 'w'

  def distill(steps, *extra):
    return script_runs.start('distill.py', workdir, tmp_path, f'--config={CONFIG}',
                             f'--teacher={teacher_dir}', f'--config.distill.total_steps={steps}',
                             *LORA_FLAGS, *extra)

  # LoRA without a student export: one line naming the flag, before anything is compiled.
  bad = subprocess.run(
      [sys.executable, 'distill.py', f'--config={CONFIG}', f'--workdir={tmp_path / "bad"}',
       f'--teacher={teacher_dir}', *LORA_FLAGS], cwd=script_runs.REPO,
      env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True, timeout=600)
  last = bad.stderr.strip().splitlines()[-1]
  assert bad.returncode == 1 and last.startswith(
      'error: --config.distill.lora.enabled=True needs --config.distill.init_student_from'), last

  start = f'--config.distill.init_student_from={student_dir}'
  script_runs.wait_ok(distill(4, start), workdir, 1500)
  script_runs.wait_ok(distill(6, start), workdir, 1500)   # resumes at 4; step 5 is a fake step
  log = script_runs.log_path(workdir).read_text()
  assert 'resumed from step 4' in log and 'LoRA rank 2' in log, log[-3000:]
  # Another student start is refused on resume.
  other = checkpoints.export(tmp_path / 'student2', _params(3), _config().model,
                             {'kind': 'student', 'step': 5})
  again = distill(6, f'--config.distill.init_student_from={other}')
  assert again.wait(timeout=600) == 1
  last = script_runs.log_path(workdir).read_text().strip().splitlines()[-1]
  assert 'was started with --config.distill.init_student_from' in last, last

  adapters, info = lora.load_adapter(workdir / 'adapter')
  assert info['base'] == lora.base_identity(student_dir) and info['rank'] == 2
  assert checkpoints.load_meta(workdir / 'adapter')['step'] == 6
  assert any(np.any(x) for x in _b_leaves(adapters).values())   # B moved off zero
  meta = checkpoints.load_meta(workdir / 'export')
  assert meta['kind'] == 'student' and meta['step'] == 6 and meta['fake_updates'] == 1
  assert meta['lora_base'] == info['base']
  merged = checkpoints.load_params(workdir / 'export')
  _same(jax.tree.map(np.asarray, lora.apply(_params(3), adapters, info['alpha'] / info['rank'])),
        merged, 'export vs student + adapter')
  from axturbo.generation import Generator, Request, SamplerOptions
  request, options = Request(text='a tone of class 3'), SamplerOptions(steps=4, seed=0)
  [a] = Generator.load(workdir / 'export').generate(request, options)
  [b] = Generator.load(student_dir, lora=str(workdir / 'adapter')).generate(request, options)
  [c] = Generator.load(student_dir).generate(request, options)
  np.testing.assert_array_equal(a.waveform, b.waveform)
  assert np.all(np.isfinite(a.waveform)) and not np.array_equal(a.waveform, c.waveform)


@pytest.mark.slow
def test_init_student_from_without_lora_starts_a_full_student(dirs):
  """distill.init_student_from alone: the student (and its EMA) start as the export's MAF + trunk,
  the fake as the teacher's, and the export keeps the student export's frozen subtrees."""
  teacher_dir, student_dir = dirs
  c = _config(student_dir)
  c.distill.lora.enabled = False
  state_lib.check_distill_config(c)
  mesh = sharding.make_mesh(c.mesh.shape)
  model = audiox.build_model(c.model)
  teacher, _ = state_lib.load_teacher(teacher_dir, model, c.model, mesh)
  start, _ = state_lib.load_student_start(student_dir, model, c.model, mesh)
  txs = step_lib.make_optimizers(c.distill)
  init_fn = state_lib.make_init_fn(model, c, *txs)
  _, shardings = state_lib.abstract_state(init_fn, model, c, mesh)
  state = _np(state_lib.init_state(init_fn, shardings, c.seed, teacher, c.distill, start))
  _same(state_lib.trainable_part(_params(3), c.distill), state.student, 'student vs export')
  _same(state.student, state.ema, 'EMA vs student')
  _same(state_lib.trainable_part(_params(7), c.distill), state.fake, 'fake vs teacher')
  _same(_params(3), state_lib.student_export_params(
      state, teacher, c.distill, state_lib.frozen_part(start, c.distill)), 'export vs student')

"""LoRA (axturbo/runtime/lora.py): the merge equation against NumPy, a zero adapter is the base,
train steps on 8 fake devices move only the adapters (sharded by their logical names) and resume
bit-exact from an orbax checkpoint, adapter files round-trip, merge-then-sample equals sampling
with the adapter applied at load time, and a mismatched base is refused with one line."""
import functools
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from axturbo.data import synthetic as synthetic_data
from axturbo.generation import generate
from axturbo.generation.request import Request, SamplerOptions
from axturbo.models import audiox
from axturbo.runtime import checkpoints, lora, optim, sharding
from axturbo.train import state as state_lib, step as step_lib
from tests import micro_train_config, script_runs

TARGETS = ('trunk/layers/*/q', 'trunk/layers/*/v', 'trunk/layers/*/attn_out',
           'trunk/layers/*/ffn_w1', 'maf/fusion_layers/linear1')


def _config(init_from='', rank=2):
  c = micro_train_config.get_config()
  c.train.lora.update(enabled=True, rank=rank, alpha=4.0, targets=TARGETS)
  c.train.init_from = str(init_from)
  return c


@functools.lru_cache(maxsize=None)
def _boxed_shapes():
  m = micro_train_config.get_config().model
  return jax.eval_shape(lambda k: audiox.init_params(audiox.build_model(m), m, k),
                        jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _base_params():
  m = micro_train_config.get_config().model
  return jax.tree.map(np.asarray, jax.jit(
      lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(jax.random.key(0)))


def _export_base(directory, step):
  m = micro_train_config.get_config().model
  return checkpoints.export(directory, _base_params(), m, {'kind': 'teacher', 'step': step})


def _random_adapters(seed=1, rank=2):
  """Adapters with a non-zero B, so that they change the model."""
  lo = _config(rank=rank).train.lora
  adapters = nn.unbox(lora.init_adapters(jax.random.key(seed), _boxed_shapes(), lo))
  keys = iter(jax.random.split(jax.random.key(seed + 100), 100))
  return jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(0.1 * jax.random.normal(next(keys), x.shape) if
                              jax.tree_util.keystr(p).endswith("'lora_b']") else x), adapters)


@pytest.fixture(scope='module')
def base_dir(tmp_path_factory):
  return _export_base(tmp_path_factory.mktemp('lora') / 'base', step=7)


# ------------------------------------------------------------------------------ the equation

def test_merge_matches_numpy_and_touches_only_the_targets():
  params, adapters = _base_params(), _random_adapters()
  lo = _config().train.lora
  merged = jax.tree.map(np.asarray, lora.apply(params, adapters, lora.scale(lo)))
  flat_p = checkpoints._flat(params)
  flat_m = checkpoints._flat(merged)
  adapted = {f"['{m.replace('/', chr(39) + '][' + chr(39))}']['kernel']"
             for m in lora.target_kernels(_boxed_shapes(), TARGETS)}
  assert len(adapted) == 2 * 4 + 1   # q, v, attn_out, ffn_w1 in both blocks; the MAF's linear1
  for k, v in flat_p.items():
    if k not in adapted:
      assert np.array_equal(flat_m[k], v), k
  # kernel + alpha / r * A @ B per stacked index, by NumPy, for three kernel layouts.
  for module in ('trunk/layers/block_0/q', 'trunk/layers/block_1/attn_out',
                 'maf/fusion_layers/linear1'):
    node_a, node_m, node_p = adapters, merged, params
    for part in module.split('/'):
      node_a, node_m, node_p = node_a[part], node_m[part], node_p[part]
    a, b, w = node_a['lora_a'], node_a['lora_b'], node_p['kernel']
    lead = a.ndim - 2
    b2 = b.reshape(*b.shape[:lead + 1], -1)
    ab = np.einsum('...ir,...ro->...io', a.astype(np.float64), b2.astype(np.float64))
    want = w + lora.scale(lo) * ab.reshape(w.shape)
    np.testing.assert_allclose(node_m['kernel'], want, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(node_m['kernel'], w)


def test_zero_init_adapter_reproduces_the_base_exactly():
  params = _base_params()
  lo = _config().train.lora
  adapters = nn.unbox(lora.init_adapters(jax.random.key(3), _boxed_shapes(), lo))
  assert adapters['trunk']['layers']['block_0']['ffn_w1']['lora_a'].shape == (3, 32, 2)
  assert all(not np.any(x) for p, x in jax.tree_util.tree_leaves_with_path(adapters)
             if jax.tree_util.keystr(p).endswith("'lora_b']"))
  checkpoints.assert_same_tree(params, jax.tree.map(np.asarray, lora.apply(params, adapters, 2.0)),
                               'base vs zero adapter')


def test_bad_targets_and_settings_name_the_field():
  lo = _config().train.lora
  with pytest.raises(ValueError, match=r"train.lora.targets: 'trunk/layers/\*/qq' matches no"):
    lora.target_kernels(_boxed_shapes(), ['trunk/layers/*/qq'])
  for field, value in (('rank', 0), ('alpha', 0.0), ('dropout', 1.0), ('targets', ())):
    bad = lo.copy_and_resolve_references()
    bad[field] = value
    with pytest.raises(ValueError, match=f'--config.train.lora.{field}='):
      lora.check_config(bad)
  c = _config()
  with pytest.raises(ValueError, match='lora.enabled=True needs --config.train.init_from'):
    state_lib.check_train_config(c)


# ------------------------------------------------------------------- train steps on 8 devices

@functools.lru_cache(maxsize=None)
def _lora_run(base):
  """(config, mesh, shardings, compiled step, initial host state, batches)."""
  config = _config(base)
  config.train.lora.dropout = 0.1
  model = audiox.build_model(config.model)
  tx = optim.make_optimizer(config.train.optim, config.train.total_steps)
  init_fn = state_lib.make_init_fn(model, config, tx)
  mesh = sharding.make_mesh((1, -1, 1))
  abstract, shardings = state_lib.abstract_state(init_fn, mesh)
  state = state_lib.init_state(init_fn, mesh, config.seed)
  params = checkpoints.load_params(base, target=state_lib.base_target(abstract.params),
                                   partial=True)
  state = state_lib.with_params(state, params, config.train)
  it = synthetic_data.make_iterator(config)
  batches = [next(it) for _ in range(3)]
  step_fn = step_lib.jit_train_step(model, tx, config, mesh, shardings)
  compiled = sharding.compile_step(step_fn, abstract, sharding.abstract_batch(batches[0], mesh),
                                   mesh)
  return config, mesh, abstract, compiled, jax.tree.map(np.asarray, state), batches


def _steps(compiled, mesh, abstract, host_state, batches):
  state = jax.device_put(host_state, jax.tree.map(lambda a: a.sharding, abstract))
  for batch in batches:
    state, metrics = compiled(state, sharding.global_batch(batch, mesh))
    assert bool(metrics['finite'])
  return jax.tree.map(np.asarray, state)


@pytest.mark.slow
def test_lora_step_aot_compiles_sharded_and_moves_only_the_adapters(base_dir):
  config, mesh, abstract, compiled, state0, batches = _lora_run(str(base_dir))
  assert mesh.shape['fsdp'] == 8
  # The adapters are sharded by their logical names: A's input axis 'embed' over fsdp.
  a = abstract.params['lora']['trunk']['layers']['block_0']['q']['lora_a']
  b = abstract.params['lora']['trunk']['layers']['block_0']['ffn_w1']['lora_b']
  assert a.sharding.spec[0] == 'fsdp' and a.shape == (32, 2), a.sharding.spec
  assert b.shape == (3, 2, 32)   # one rank-2 map per conv tap
  assert compiled.input_shardings[0][0].params['lora']['trunk']['layers']['block_0']['q'][
      'lora_a'].spec[0] == 'fsdp'
  # Optimizer moments and EMA cover the adapters only.
  adapter_shapes = [x.shape for x in jax.tree.leaves(state0.params['lora'])]
  assert [x.shape for x in jax.tree.leaves(state0.ema)] == adapter_shapes
  mu = [x.shape for x in jax.tree.leaves(state0.opt_state) if x.ndim]
  assert sorted(mu) == sorted(adapter_shapes * 2)
  # The base as loaded from the checkpoint.
  checkpoints.assert_same_tree(_base_params(), lora.split(state0.params)[0], 'base vs loaded')

  state = _steps(compiled, mesh, abstract, state0, batches[:2])
  base0, adapters0 = lora.split(state0.params)
  base2, adapters2 = lora.split(state.params)
  checkpoints.assert_same_tree(base0, base2, 'base before vs after two LoRA steps')
  for k, v in checkpoints._flat(adapters2).items():
    assert not np.array_equal(v, checkpoints._flat(adapters0)[k]), f'{k} did not move'
  assert int(state.updates) == 2


@pytest.mark.slow
def test_lora_resume_from_orbax_is_bit_exact(base_dir, tmp_path):
  config, mesh, abstract, compiled, state0, batches = _lora_run(str(base_dir))
  straight = _steps(compiled, mesh, abstract, state0, batches)
  # Two steps, an orbax checkpoint, a restore into the abstract shardings, the third step.
  half = jax.device_put(_steps(compiled, mesh, abstract, state0, batches[:2]),
                        jax.tree.map(lambda a: a.sharding, abstract))
  it = synthetic_data.make_iterator(config)
  manager = checkpoints.make_manager(tmp_path, config.train)
  checkpoints.save(manager, half, it, force=True)
  manager.wait_until_finished()
  restored = checkpoints.restore_latest(manager, abstract, it)
  manager.close()
  assert int(restored.step) == 2
  resumed = _steps(compiled, mesh, abstract, jax.tree.map(np.asarray, restored), batches[2:])
  checkpoints.assert_same_tree(straight, resumed, 'straight vs resumed')


# ------------------------------------------------------------------------------ adapter files

def test_adapter_file_round_trip_and_mismatched_base(base_dir, tmp_path):
  lo = _config().train.lora
  adapters = _random_adapters()
  identity = lora.base_identity(base_dir)
  assert identity['step'] == 7 and identity['config_hash'] == checkpoints.config_hash(
      micro_train_config.get_config().model)
  out = lora.save_adapter(tmp_path / 'adapter', adapters, micro_train_config.get_config().model,
                          lo, identity, {'step': 2})
  loaded, info = lora.load_adapter(out)
  checkpoints.assert_same_tree(adapters, loaded, 'saved vs loaded adapter')
  assert info == {'rank': 2, 'alpha': 4.0, 'targets': list(TARGETS), 'base': identity}
  # The adapters only: r * (in + out) numbers per stacked map, not the kernels' in * out:
  # q, v (32 -> 2 x 16) and attn_out, ffn_w1 (3 taps of 32 -> 32) in two blocks, the MAF's
  # linear1 (1 layer of 32 -> 128).
  assert sum(x.size for x in jax.tree.leaves(loaded)) == 2 * (
      2 * 2 * (32 + 32) + 2 * 3 * 2 * (32 + 32)) + 2 * (32 + 128)
  lora.check_base(out, info, base_dir)
  # Another base (same config, another step) is refused, with one line naming both.
  other = _export_base(tmp_path / 'other', step=8)
  with pytest.raises(ValueError) as e:
    lora.apply_adapter_file(_base_params(), out, other)
  message = str(e.value)
  assert '\n' not in message and str(base_dir) in message and str(other) in message, message
  with pytest.raises(ValueError, match='a LoRA adapter, not a model checkpoint'):
    generate.Generator.load(out)
  with pytest.raises(ValueError, match='not a LoRA adapter'):
    lora.load_adapter(base_dir)
  # An adapter never replaces a model checkpoint.
  with pytest.raises(FileExistsError, match='not an adapter'):
    lora.save_adapter(base_dir, adapters, micro_train_config.get_config().model, lo, identity)


@pytest.mark.e2e
def test_merge_cli_then_sample_equals_sample_with_lora(base_dir, tmp_path):
  lo = _config().train.lora
  adapter = lora.save_adapter(tmp_path / 'adapter', _random_adapters(),
                              micro_train_config.get_config().model, lo,
                              lora.base_identity(base_dir), {'step': 5})
  merged = tmp_path / 'merged'
  run = lambda *a: subprocess.run([sys.executable, '-m', 'axturbo.lora', 'merge', *a],
                                  cwd=script_runs.REPO, env=script_runs.env(tmp_path, 1),
                                  capture_output=True, text=True, timeout=600)
  done = run(f'--base={base_dir}', f'--adapter={adapter}', f'--out={merged}')
  assert done.returncode == 0, done.stderr[-2000:]
  meta = checkpoints.load_meta(merged)
  assert meta['kind'] == 'teacher' and meta['step'] == 5 and meta['lora_base']['step'] == 7
  # The merged tree is the base with the adapter applied; an existing --out is refused.
  checkpoints.assert_same_tree(
      jax.tree.map(np.asarray, lora.apply(_base_params(), _random_adapters(), lora.scale(lo))),
      checkpoints.load_params(merged), 'merged on disk vs in memory')
  again = run(f'--base={base_dir}', f'--adapter={adapter}', f'--out={merged}')
  assert again.returncode == 1 and 'already exists' in again.stderr.strip().splitlines()[-1]
  # Same samples from the merged checkpoint and from the base with the adapter at load time.
  request, options = Request(text='rain'), SamplerOptions(sampler='teacher', steps=2, seed=0,
                                                          cfg_scale=3.0)
  [a] = generate.Generator.load(merged, kind='teacher').generate(request, options)
  [b] = generate.Generator.load(base_dir, kind='teacher', lora=str(adapter)).generate(
      request, options)
  [c] = generate.Generator.load(base_dir, kind='teacher').generate(request, options)
  np.testing.assert_array_equal(a.waveform, b.waveform)
  assert not np.array_equal(a.waveform, c.waveform)   # the adapter changes the sound
  # sample.py --lora on another base: one line naming both, before anything is compiled.
  other = _export_base(tmp_path / 'other', step=8)
  bad = subprocess.run([sys.executable, 'sample.py', f'--checkpoint={other}',
                        f'--lora={adapter}', f'--out={tmp_path / "s"}', '--teacher'],
                       cwd=script_runs.REPO, env=script_runs.env(tmp_path, 1),
                       capture_output=True, text=True, timeout=600)
  last = bad.stderr.strip().splitlines()[-1]
  assert bad.returncode == 1 and str(other) in last and str(base_dir) in last, bad.stderr[-2000:]


@pytest.mark.e2e
def test_train_py_lora_resumes_and_writes_adapter_and_merged_export(base_dir, tmp_path):
  """train.py from a base export: 2 steps, then rerun to 4 (resumed from the orbax state);
  <workdir>/adapter records the base, and <workdir>/export is the base with it merged."""
  workdir = tmp_path / 'w'
  config = str(script_runs.REPO / 'tests' / 'micro_train_config.py')

  def train(steps):
    proc = script_runs.start(
        'train.py', workdir, tmp_path, f'--config={config}', f'--config.train.total_steps={steps}',
        '--config.train.lora.enabled=True', '--config.train.lora.rank=2',
        f'--config.train.init_from={base_dir}', devices=8)
    script_runs.wait_ok(proc, workdir, 1500)

  train(2)
  train(4)
  log = script_runs.log_path(workdir).read_text()
  assert 'resumed from step 2' in log and 'base is frozen' in log
  adapters, info = lora.load_adapter(workdir / 'adapter')
  assert info['base'] == lora.base_identity(base_dir) and info['rank'] == 2
  assert checkpoints.load_meta(workdir / 'adapter')['step'] == 4
  checkpoints.assert_same_tree(
      jax.tree.map(np.asarray, lora.apply(_base_params(), adapters, info['alpha'] / 2)),
      checkpoints.load_params(workdir / 'export'), 'export vs base + adapter')
  assert any(np.any(x) for x in jax.tree.leaves(adapters))   # B moved off zero

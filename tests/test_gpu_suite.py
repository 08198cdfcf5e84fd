"""benchmarks/gpu_suite.py at micro size on CPU: rows, shapes and the table (no timing asserts).

The t2a, teacher, v2a and aot sections run end to end here (the other inference sections are
the same timing code at other batch sizes or pipeline options: the serving pipeline's batching
and options are tested in test_serving). The train / distill sections reuse train.py's and
distill.py's compiled steps (tested in test_train_step / test_distill) and take minutes to
compile on 2 cores, so only their inputs and FLOP model are checked; run the rest by hand with
  python -m benchmarks.gpu_suite --out /tmp/s --size micro --runs 2 --warmup 1 --batches 2 \
      --teacher_steps 2 --train_runs 2 --train_batch 2 --distill_batch 2
"""
import importlib
import importlib.util
import json
import pathlib
import subprocess
import sys

from absl import flags

import flax.linen as nn
import jax
import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu_suite.py'
_spec = importlib.util.spec_from_file_location('gpu_suite', _PATH)
gpu_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_suite)


def test_command_line():
  """absl flags, defined only when run as a program: importing the module defined none."""
  assert 'sections' not in flags.FLAGS and 'train_batch' not in flags.FLAGS
  root = _PATH.parents[1]
  run = lambda *a: subprocess.run([sys.executable, '-m', 'benchmarks.gpu_suite', *a], cwd=root,
                                  capture_output=True, text=True, check=False)
  helped = run('--help')   # absl's --help exits with status 1
  for name in ('--out', '--report', '--sections', '--batches', '--budget_s', '--unroll_layers'):
    assert name in helped.stdout
  bad = run('--out', '/tmp/unused', '--sections', 't2a,nope')
  assert bad.returncode != 0 and bad.stderr.strip() == (
      f"error: --sections: unknown ['nope']; choose from {gpu_suite.SECTIONS}")
  args = gpu_suite.parse_args(['--out', 'o', '--batches', '4,16', '--size', 'micro'])
  assert (args.batches, args.sections, args.size) == ([4, 16], list(gpu_suite.SECTIONS[:-1]),
                                                       'micro')


@pytest.mark.slow
def test_inference_sections_write_rows_and_table(tmp_path, capsys):
  rc = gpu_suite.run(gpu_suite.parse_args([
      '--out', str(tmp_path), '--size', 'micro', '--runs', '1', '--warmup', '0',
      '--sections', 't2a,teacher,v2a,aot', '--teacher_steps', '2']))
  assert rc == 0
  rows = json.loads((tmp_path / 'ours.json').read_text())
  timed = {(r['section'], r['variant']): r for r in rows if 'median_ms' in r}
  assert set(timed) == {
      ('t2a', 'fast bf16'), ('t2a', 'fast bf16, layers unrolled'),
      ('t2a', 'fast bf16, cached prompt'), ('t2a', 'fast fp32 (highest)'),
      ('teacher', 'fast bf16, 2 Euler steps, CFG 6'),
      ('v2a', 'fast bf16, CLIP on 2 frames')}
  for r in timed.values():
    assert r['median_ms'] > 0 and r['p90_ms'] >= r['median_ms'] and r['runs'] == 1
  assert timed[('teacher', 'fast bf16, 2 Euler steps, CFG 6')]['nfe'] == 4
  assert timed[('t2a', 'fast bf16')]['floor_ms'] > 0
  assert 'floor_ms' not in timed[('t2a', 'fast fp32 (highest)')]
  aot = {r['variant']: r for r in rows if r['section'] == 'aot'}
  assert len(aot) == 9 and all(r['floor_ms'] > 0 for r in aot.values())
  assert all(r['xla_tflop'] > 0 for k, r in aot.items() if not k.startswith('analytic'))
  [err] = [r for r in rows if r['variant'] == 'error: fast bf16 vs fp32']
  assert 0 < err['latents_rel_err'] < 0.1
  # The table is printed last and `--report` rebuilds it from the JSON.
  out = capsys.readouterr().out
  table = gpu_suite.report(tmp_path)
  assert out.rstrip().endswith(table.rstrip())
  assert table.count('\n| ') == len(timed)   # one line per timed row after the header


def test_floor_model_at_official_size():
  """The analytic costs behind `floor_ms` (issue 12's figures: ~4.1 GB of bf16 trunk weights
  per NFE, ~1.2 TFLOP of VAE decode per 10 s clip)."""
  from axturbo.models import audiox
  m = gpu_suite.load_config('official').model
  model = audiox.build_model(m)
  params = jax.eval_shape(lambda: nn.unbox(audiox.init_params(model, m, jax.random.PRNGKey(0))))
  costs = gpu_suite.stage_costs(m, params, 1, steps=4, cfg=False, video=False)
  trunk_flops, trunk_bytes, calls = costs['trunk']
  assert calls == 4
  assert 4.0e9 < trunk_bytes < 4.5e9
  assert 0.9e12 < trunk_flops / 4 < 1.1e12     # ~2 x 2.04 B per-position weights x 237
  assert 1.1e12 < costs['decode'][0] < 1.3e12
  floor = gpu_suite.floor_ms(costs)
  assert 5.0 < floor < 8.0
  assert costs['t5'][0] < 0.05 * trunk_flops and costs['maf'][0] < 0.05 * trunk_flops
  # Encoder and decoder mirror each other: about the same work per clip.
  enc = gpu_suite.oobleck_flops(m.vae, m.audio_samples, 'encode')
  assert enc == pytest.approx(costs['decode'][0], rel=0.05)


def test_random_batch_matches_the_pipeline_batches():
  from axturbo.data import pipeline
  m = gpu_suite.micro_model_config()
  batch = gpu_suite.random_batch(m, 3)
  example = pipeline.empty_example(m)
  assert set(batch) == set(example)
  for k, v in example.items():
    assert batch[k].shape == (3,) + np.shape(v) and batch[k].dtype == np.asarray(v).dtype, k


@pytest.fixture
def official_stubs(monkeypatch):
  """benchmarks/official_stubs on sys.path; the stand-in modules are forgotten afterwards."""
  import sys
  before = set(sys.modules)
  stubs = _PATH.parent / 'official_stubs'
  monkeypatch.syspath_prepend(str(stubs))
  yield
  for name in set(sys.modules) - before:
    del sys.modules[name]


def test_official_stubs_compute_what_they_stand_for(official_stubs):
  """The stand-ins on the official inference path compute the real layers; the others raise."""
  torch = pytest.importorskip('torch', reason='the official-code stand-ins are torch modules')
  layers = importlib.import_module('dac.nn.layers')
  tv_spec = importlib.util.spec_from_file_location(
      'stub_torchvision_transforms', _PATH.parent / 'official_stubs' / 'cpu_only' / 'torchvision'
      / 'transforms.py')
  tv = importlib.util.module_from_spec(tv_spec)
  tv_spec.loader.exec_module(tv)
  x = torch.linspace(-3, 3, 2 * 3 * 5).reshape(2, 3, 5)
  snake = layers.Snake1d(3)
  with torch.no_grad():
    snake.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1))
    a = np.array([0.5, 1.0, 2.0]).reshape(1, 3, 1)
    want = x.numpy() + np.sin(a * x.numpy()) ** 2 / (a + 1e-9)
    np.testing.assert_allclose(snake(x).numpy(), want, rtol=1e-6, atol=1e-6)
  conv = layers.WNConv1d(3, 4, 3)
  assert hasattr(conv, 'weight_g') or hasattr(conv, 'parametrizations')  # weight-normed
  img = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
  out = tv.Compose([tv.Normalize(mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])])(img)
  want = (img.numpy() - np.array([0.1, 0.2, 0.3]).reshape(3, 1, 1)) / np.array(
      [0.5, 0.25, 2.0]).reshape(3, 1, 1)
  # float32 against float64: an absolute bound too, for values near 0.
  np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6)
  x_transformers = importlib.import_module('x_transformers')
  with pytest.raises(NotImplementedError, match='x_transformers.Encoder is an import-only'):
    x_transformers.Encoder(dim=8)

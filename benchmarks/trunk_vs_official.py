r"""The trunk side by side: the official MMDiT (PyTorch) against ours, 4-step student sampling.

  python -m benchmarks.trunk_vs_official --official DIR [--rounds 5] [--runs 3] [--warmup 1]
      [--sizes 512x8x1,512x8x8,1536x2x1] [--layouts inference,scanned]

DIR holds the official code (NoizAI/AudioX-Turbo at af50898, never committed here):
`git -C <clone> archive af50898 audiox_turbo | tar -x -C DIR`. Only its trunk is imported
(`models/dit.py` `MMDiffusionTransformer` and `inference/sampling.py` `sample_dmd`, unmodified;
the package `__init__`s, which pull in every conditioner, are skipped), so no stubs folder is
needed: the three packages those two files import but the trunk never calls (`x_transformers`,
`dac.nn.layers.Snake1d`, `k_diffusion`) get in-memory stand-ins that raise if used.

What is timed, per size (width x depth x batch), in float32 on CPU with random weights:
  * official: `sample_dmd(MMDiffusionTransformer(...), noise, steps=4, cross_attn_cond=cond)`
    under `torch.inference_mode()`, noise drawn inside (as `generate_diffusion_cond_dmd`);
  * ours: `MMDiT` at the same sizes in `sampling.sample_student` (4 steps), one jitted call
    drawing its noise on the device, the result on the host; 'inference' is the layout
    `audiox.build_model(..., inference=True)` picks (no layer scan, the scanned tree split
    per block by `mmdit.unstack_blocks`, outside the timed call), 'scanned' the training
    config's scan.
Official sizes: the config's `num_heads` C is a head width (docs/official.md): 512 / C 16 is
32 heads of 16, 1536 / C 24 is 64 heads of 24 (the released split); FFN hidden 1536 and 4096;
conditioning (B, 384, 768), 236 latent frames of 64 channels (hard-wired in the official code).

Each (round, size, implementation) runs in its own process, alternating official and ours, so
slow phases of a shared machine hit both; each process times `--runs` calls after `--warmup`
untimed ones (ours: after its compiling call) and reports the median. The table gives, per
size, the median over rounds of official / ours and the range. The machine's float32 matmul
ceiling (2048^3, jax and torch) is measured in the same run: compare ratios, not seconds.
"""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import types

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

SIZES = '512x8x1,512x8x8,1536x2x1'

_OFFICIAL = flags.DEFINE_string('official', os.environ.get('AXTURBO_OFFICIAL', '/work/official'),
                                'Folder holding the official audiox_turbo/ (env AXTURBO_OFFICIAL).')
_SIZES = flags.DEFINE_list('sizes', SIZES.split(','), 'WIDTHxDEPTHxBATCH sizes.')
_LAYOUTS = flags.DEFINE_list('layouts', ['inference'],
                             "Our layouts to time: 'inference' (the default one) and/or 'scanned'.")
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating process rounds.')
_RUNS = flags.DEFINE_integer('runs', 3, 'Timed calls per process (median).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed calls per process.')
_WORKER = flags.DEFINE_list('worker', None, 'Internal: run one measurement (KIND[,SIZE[,LAYOUT]]) '
                            'and print it as JSON.')

# Official `num_heads` C per width: a head *width* (docs/official.md); 1536 -> 64 heads of 24.
OFFICIAL_C = {512: 16, 1536: 24}
IO, COND_LEN, COND_DIM, SEQ = 64, 384, 768, 236


def mlp_hidden(width: int) -> int:
  """The official ConvMLP hidden width: int(2 * 4D / 3) rounded up to a multiple of 256."""
  return 256 * -(-int(2 * int(width * 4) / 3) // 256)


def parse_size(text: str) -> tuple[int, int, int]:
  try:
    w, d, b = (int(x) for x in text.split('x'))
  except ValueError:
    sys.exit(f'error: --sizes entry {text!r} is not WIDTHxDEPTHxBATCH')
  if w not in OFFICIAL_C:
    sys.exit(f'error: --sizes width {w}: choose from {sorted(OFFICIAL_C)}')
  return w, d, b


def _median_ms(call, runs: int, warmup: int) -> float:
  for _ in range(warmup):
    call()
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


# ---------------------------------------------------------------------------------- workers


def _stand_in(name: str, **attrs) -> types.ModuleType:
  def refuse(*a, **k):
    raise RuntimeError(f'{name}: import-only stand-in (benchmarks/trunk_vs_official.py)')
  module = types.ModuleType(name)
  for attr in attrs.get('names', ()):
    setattr(module, attr, refuse)
  return module


def import_official(official: pathlib.Path):
  """(MMDiffusionTransformer, sample_dmd) from the official files, package inits skipped."""
  if not (official / 'audiox_turbo' / 'models' / 'dit.py').is_file():
    sys.exit(f'error: --official {official}: no audiox_turbo/models/dit.py (see --help)')
  for name, attrs in (('x_transformers', ('ContinuousTransformerWrapper', 'Encoder')),
                      ('dac', ()), ('dac.nn', ()), ('dac.nn.layers', ('Snake1d',)),
                      ('k_diffusion', ())):
    try:
      __import__(name)
    except ImportError:
      sys.modules[name] = _stand_in(name, names=attrs)
  for pkg in ('audiox_turbo', 'audiox_turbo.models', 'audiox_turbo.inference'):
    module = types.ModuleType(pkg)
    module.__path__ = [str(official / pkg.replace('.', '/'))]
    sys.modules[pkg] = module
  from audiox_turbo.inference.sampling import sample_dmd
  from audiox_turbo.models.dit import MMDiffusionTransformer
  return MMDiffusionTransformer, sample_dmd


def worker_official(args, width, depth, batch) -> float:
  import torch
  net_cls, sample_dmd = import_official(pathlib.Path(args.official).resolve())
  torch.manual_seed(0)
  net = net_cls(io_channels=IO, embed_dim=width, depth=depth, num_heads=OFFICIAL_C[width],
                cond_token_dim=COND_DIM, global_cond_dim=COND_DIM, project_cond_tokens=False,
                transformer_type='continuous_transformer').eval().requires_grad_(False)
  cond = torch.randn(batch, COND_LEN, COND_DIM)

  def call():
    with torch.inference_mode():
      noise = torch.randn(batch, IO, SEQ)
      sample_dmd(net, noise, steps=4, device='cpu', cross_attn_cond=cond).numpy()

  return _median_ms(call, args.runs, args.warmup)


def worker_ours(args, width, depth, batch, layout) -> float:
  import flax.linen
  import jax
  import jax.numpy as jnp
  import numpy as np
  from axturbo.generation import sampling
  from axturbo.models import mmdit
  heads = width // OFFICIAL_C[width]
  sizes = dict(io_channels=IO, embed_dim=width, depth=depth, num_heads=heads,
               head_dim=width // heads, cond_dim=COND_DIM, cond_len=COND_LEN, seq_len=SEQ,
               mlp_hidden=mlp_hidden(width))
  x, t = jnp.zeros((batch, SEQ, IO)), jnp.zeros((batch,))
  cond = jax.random.normal(jax.random.PRNGKey(1), (batch, COND_LEN, COND_DIM))
  # The training tree (scanned), as a checkpoint holds it; 'inference' converts it as
  # Generator and Pipeline do.
  params = jax.jit(mmdit.MMDiT(**sizes).init)(jax.random.PRNGKey(0), x, t, cond)['params']
  params = flax.linen.unbox(params)
  model = mmdit.MMDiT(**sizes, scan_layers=layout != 'inference',
                      winograd=layout == 'inference' and mmdit.inference_winograd(3))
  if layout == 'inference':
    params = mmdit.inference_layout(params)

  @jax.jit
  def sample(params, cond, key):
    k_init, k_re = jax.random.split(key)
    noise = jax.random.normal(k_init, (batch, SEQ, IO))
    renoise = jax.random.normal(k_re, (3, batch, SEQ, IO))
    vf = lambda z, t: model.apply({'params': params}, z, t, cond)
    return sampling.sample_student(vf, noise, renoise, 4)

  seed = iter(range(10**6))
  call = lambda: np.asarray(sample(params, cond, jax.random.PRNGKey(next(seed))))
  call()   # compiles
  return _median_ms(call, args.runs, args.warmup)


def worker_ceiling(args) -> dict:
  import jax
  import jax.numpy as jnp
  import torch
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  jax_ms = _median_ms(lambda: f(a).block_until_ready(), 7, 1)
  b = torch.ones(n, n)
  torch_ms = _median_ms(lambda: b @ b, 7, 1)
  flop = 2 * n**3
  return {'jax_gflops': flop / jax_ms / 1e6, 'torch_gflops': flop / torch_ms / 1e6,
          'torch_threads': torch.get_num_threads(), 'cpus': os.cpu_count()}


# ---------------------------------------------------------------------------------- driver


def spawn(args, *worker: str) -> dict:
  cmd = [sys.executable, '-m', 'benchmarks.trunk_vs_official', '--official', args.official,
         '--runs', str(args.runs), '--warmup', str(args.warmup), '--worker', ','.join(worker)]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if out.returncode:
    sys.exit(f'error: worker {" ".join(worker)} failed:\n{out.stderr[-2000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  args = types.SimpleNamespace(official=_OFFICIAL.value, runs=_RUNS.value, warmup=_WARMUP.value,
                               worker=_WORKER.value)

  if args.worker:
    kind, *rest = args.worker
    if kind == 'ceiling':
      print(json.dumps(worker_ceiling(args)))
      return 0
    w, d, b = parse_size(rest[0])
    ms = (worker_official(args, w, d, b) if kind == 'official'
          else worker_ours(args, w, d, b, rest[1]))
    print(json.dumps({'ms': ms}))
    return 0

  sizes = _SIZES.value
  for s in sizes:
    parse_size(s)
  layouts = _LAYOUTS.value
  for layout in layouts:
    if layout not in ('inference', 'scanned'):
      sys.exit(f"error: --layouts {layout!r}: choose 'inference' or 'scanned'")
  import_official(pathlib.Path(args.official).resolve())   # fail early, in one line
  ceiling = spawn(args, 'ceiling')
  print(f"# matmul ceiling (2048^3 float32): jax {ceiling['jax_gflops']:.0f} GFLOP/s, torch "
        f"{ceiling['torch_gflops']:.0f} GFLOP/s ({ceiling['torch_threads']} torch threads, "
        f"{ceiling['cpus']} CPUs); load {os.getloadavg()[0]:.1f}", flush=True)
  ratios = {(s, l): [] for s in sizes for l in layouts}
  for r in range(_ROUNDS.value):
    for s in sizes:
      official = spawn(args, 'official', s)['ms']
      for layout in layouts:
        ours = spawn(args, 'ours', s, layout)['ms']
        ratios[(s, layout)].append(official / ours)
        print(f'round {r + 1} {s:9s} official {official:9.0f} ms  ours ({layout}) '
              f'{ours:9.0f} ms  official/ours {official / ours:.2f}', flush=True)
  print('\n| trunk size (width x depth x batch) | ' +
        ' | '.join(f'official / ours ({l}): median [min, max]' for l in layouts) + ' |')
  print('|---|' + '---|' * len(layouts))
  for s in sizes:
    cells = [f'{statistics.median(v):.2f}x [{min(v):.2f}, {max(v):.2f}]'
             for v in (ratios[(s, l)] for l in layouts)]
    print(f'| {s} | ' + ' | '.join(cells) + ' |')
  print(f"\nmatmul ceiling: jax {ceiling['jax_gflops']:.0f}, torch {ceiling['torch_gflops']:.0f} "
        f"GFLOP/s; load average at the end {os.getloadavg()[0]:.1f}")
  return 0


if __name__ == '__main__':
  app.run(main)

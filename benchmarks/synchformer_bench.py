"""Latency of the Synchformer sync-feature extractor on one 10 s video (docs/benchmarks.md).

  python -m benchmarks.synchformer_bench [--size micro|small|official] [--frames 250]
      [--repeats 5] [--dtype float32|bfloat16] [--flops_only]

Times `Synchformer.encode_frames` (normalise, cut 16-frame windows every 8, run every window as
one batch, aggregate) jitted, on (1, frames, 224, 224, 3) uint8 frames already in device
memory, with random weights: compile time, then the median of `repeats` calls. Also prints XLA's
FLOP count of the compiled executable (`--flops_only`: that count alone, compiled for abstract
weights and frames, so the official size costs no memory or run time). Sizes: micro is the
parity test's (width 32, depth 2), small is width 192 / depth 4 / 3 heads, official is the
released ViT-B/16 (width 768, depth 12). Not part of the library: nothing imports this file.
"""
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from axturbo.models import synchformer as sf

SIZES = {
    'micro': dict(embed_dim=32, depth=2, num_heads=4),
    'small': dict(embed_dim=192, depth=4, num_heads=3),
    'official': dict(),
}

_SIZE = flags.DEFINE_enum('size', 'small', sorted(SIZES), 'Model size (see above).')
_FRAMES = flags.DEFINE_integer('frames', sf.num_sync_frames(10), 'Video frames (default: 10 s).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls (median).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_FLOPS_ONLY = flags.DEFINE_bool('flops_only', False,
                                "Only XLA's FLOP count, compiled for abstract weights and frames.")


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan')))


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  args = types.SimpleNamespace(size=_SIZE.value, frames=_FRAMES.value, repeats=_REPEATS.value,
                               dtype=_DTYPE.value, flops_only=_FLOPS_ONLY.value)
  model = sf.Synchformer(**SIZES[args.size], dtype=jnp.dtype(args.dtype))
  window = jnp.zeros((1, model.num_frames, model.image_size, model.image_size, 3), jnp.uint8)
  encode = jax.jit(lambda p, f: model.apply(p, f, method='encode_frames'))
  if args.flops_only:
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                 sf.normalize_frames(window)))
    video = jax.ShapeDtypeStruct((1, args.frames) + window.shape[2:], jnp.uint8)
    print(f'size {args.size}, {args.frames} frames: XLA flops '
          f'{_flops(encode.lower(abstract, video).compile()) / 1e9:.1f} G')
    return
  params = jax.jit(lambda k: model.init(k, sf.normalize_frames(window)))(jax.random.PRNGKey(0))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  rng = np.random.default_rng(0)
  frames = jax.device_put(rng.integers(0, 256, (1, args.frames, model.image_size,
                                                 model.image_size, 3), dtype=np.uint8))
  t0 = time.perf_counter()
  compiled = encode.lower(params, frames).compile()
  compile_s = time.perf_counter() - t0
  compiled(params, frames).block_until_ready()  # warm-up
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    out = compiled(params, frames).block_until_ready()
    times.append(time.perf_counter() - t0)
  segments = sf.num_segments(args.frames)
  median = statistics.median(times)
  print(f'device {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), size {args.size} '
        f'({count:,d} parameters), {args.dtype}, {args.frames} frames -> {segments} windows -> '
        f'features {tuple(out.shape)}')
  print(f'compile {compile_s:.1f} s; latency median {1e3 * median:.0f} ms over {args.repeats} '
        f'(min {1e3 * min(times):.0f} ms), {1e3 * median / segments:.1f} ms per window; '
        f'XLA flops {_flops(compiled) / 1e9:.1f} G')


if __name__ == '__main__':
  app.run(main)

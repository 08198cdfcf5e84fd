"""Round trip of the log-mel codec, judged by the exact event detector (docs/latent_codec.md).

  python -m benchmarks.mel_codec_bench [--clips 48]

For each `MelCodec` setting: the latent mean/std measured on 64 training clips (the values a
config would store), then held-out clips encoded, decoded (jitted, batched) and scored with
Cat / Cnt / Ord / TS against their annotations, clean and with Gaussian noise of std 0.5 added
to the normalised latent. Not part of the library: nothing imports this file.
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from axturbo.data import embedded
from axturbo.eval import event_scores
from axturbo.eval import event_detector
from axturbo.models import mel_codec

_CLIPS = flags.DEFINE_integer('clips', 48, 'Held-out clips scored per setting.')

SR, N, DURATION = 16000, 32768, 2.0
SETTINGS = (dict(), dict(n_mels=80), dict(gl_iters=64), dict(nnls_iters=0), dict(eps=1e-4),
            dict(n_mels=96, n_fft=1024))


def waves(split: str, count: int) -> tuple[list[dict], jax.Array]:
  clips = [embedded.make_clip(i, split, SR, DURATION) for i in range(count)]
  x = np.stack([np.pad(c['waveform'], ((0, N - len(c['waveform'])), (0, 0))) for c in clips])
  return clips, jnp.asarray(x)


def scores(clips: list[dict], y: np.ndarray) -> list[int]:
  n = int(SR * DURATION)
  agg = event_scores.aggregate([event_scores.score_clip(event_detector.detect_events(w[:n], SR),
                                                        c['annotations'])
                                for c, w in zip(clips, y)])
  return [round(agg[k]) for k in ('cat', 'count', 'order', 'timestamp')]


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  _, train = waves('train', 64)
  clips, x = waves('heldout', _CLIPS.value)
  print('| setting | latent T x C | mean / std | clean | + noise 0.5 | encode | decode |')
  for kw in SETTINGS:
    z_train = mel_codec.MelCodec(**kw).encode(train)
    codec = mel_codec.MelCodec(**kw, mean=float(z_train.mean()), std=float(z_train.std()))
    encode, decode = jax.jit(codec.encode), jax.jit(codec.decode)
    z = encode(x)
    y = np.asarray(decode(z))
    t0 = time.perf_counter()
    encode(x).block_until_ready()
    t1 = time.perf_counter()
    decode(z).block_until_ready()
    t2 = time.perf_counter()
    noisy = np.asarray(decode(z + 0.5 * jax.random.normal(jax.random.key(1), z.shape)))
    print(f'| {kw or "default"} | {z.shape[1]} x {z.shape[2]} | {codec.mean:.3f} / '
          f'{codec.std:.3f} | {scores(clips, y)} | {scores(clips, noisy)} | '
          f'{1e3 * (t1 - t0):.0f} ms | {1e3 * (t2 - t1):.0f} ms |', flush=True)


if __name__ == '__main__':
  app.run(main)

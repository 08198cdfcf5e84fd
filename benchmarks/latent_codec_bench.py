"""Measures the candidate audio latents of configs/tiny.py on the embedded dataset.

  XLA_FLAGS=--xla_force_host_platform_device_count=1 taskset -c 0,1 \
    python -m benchmarks.latent_codec_bench --vae_steps 300

(a) `PatchCodec` (fixed mid/side + DCT-II frames): reconstruction, codec time, latent stats.
(b) a small `OobleckVAE` trained here from scratch (L1 + multi-resolution STFT + KL), as a
    quickstart stage would: reconstruction after training, time per step, codec time.
Plus the trunk cost each latent implies (jitted MMDiT forward+backward on one batch).
Results go to stdout; docs/latent_codec.md records the numbers and the decision.
Not part of the library: nothing imports this file.
"""
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from axturbo.data import embedded
from axturbo.models import mmdit as mmdit_lib
from axturbo.models.patch_codec import PatchCodec
from axturbo.models.vae import OobleckVAE

_CLIPS = flags.DEFINE_integer('clips', 32, '4 s clips per split (2 crops each).')
_VAE_STEPS = flags.DEFINE_integer('vae_steps', 300, 'Training steps of the tiny Oobleck VAE.')
_VAE_BATCH = flags.DEFINE_integer('vae_batch', 4, 'Its batch.')
_VAE_CROP = flags.DEFINE_integer('vae_crop', 4096, 'Its crop, in samples.')
_KL_WEIGHT = flags.DEFINE_float('kl_weight', 1e-4, 'Its KL loss weight.')
_LR = flags.DEFINE_float('lr', 3e-4, 'Its learning rate.')
_SKIP_TRUNK = flags.DEFINE_bool('skip_trunk', False, 'Skip the trunk cost lines.')

SR = 16000
N = 32768
FFT_SIZES = (256, 512, 1024)


def clips(split: str, count: int, offset: int = 0) -> np.ndarray:
  """(2·count, N, 2) float32: first and last N samples of `count` 4 s embedded clips."""
  waves = [embedded.make_clip(offset + i, split, SR, 4.0)['waveform'] for i in range(count)]
  return np.stack([w[:N] for w in waves] + [w[-N:] for w in waves])


def stft_mag(x: jax.Array, n_fft: int) -> jax.Array:
  """(B, N, C) -> |STFT| (B, C, frames, n_fft/2+1), Hann window, hop n_fft/4, no padding."""
  hop = n_fft // 4
  frames = (x.shape[1] - n_fft) // hop + 1
  idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
  seg = jnp.swapaxes(x, 1, 2)[:, :, idx] * jnp.hanning(n_fft + 2)[1:-1]
  return jnp.abs(jnp.fft.rfft(seg, axis=-1))


def mrstft(x: jax.Array, y: jax.Array) -> jax.Array:
  """Multi-resolution STFT distance: mean over FFT sizes of spectral convergence + log-mag L1."""
  total = 0.0
  for n_fft in FFT_SIZES:
    mx, my = stft_mag(x, n_fft), stft_mag(y, n_fft)
    sc = jnp.linalg.norm(mx - my) / (jnp.linalg.norm(my) + 1e-7)
    # eps 1e-4: float32 rounding (~1e-7 per sample) in exactly silent stretches stays below it.
    logmag = jnp.mean(jnp.abs(jnp.log(mx + 1e-4) - jnp.log(my + 1e-4)))
    total = total + sc + logmag
  return total / len(FFT_SIZES)


def snr_db(x: np.ndarray, ref: np.ndarray) -> float:
  return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((x - ref) ** 2), 1e-30)))


def time_fn(fn, *args, reps: int = 5) -> float:
  """Median seconds of a jitted call (after one compile run)."""
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def report(name: str, codec, params, x: np.ndarray) -> None:
  enc = jax.jit(lambda a: codec.apply(params, a, deterministic=True, method='encode'))
  dec = jax.jit(lambda z: codec.apply(params, z, method='decode'))
  z = enc(x)
  y = np.asarray(dec(z))
  one = x[:1]
  t_enc, t_dec = time_fn(enc, one), time_fn(dec, enc(one))
  print(f'[{name}] latent {tuple(z.shape[1:])} std {float(jnp.std(z)):.3f} '
        f'mean {float(jnp.mean(z)):+.3f} | SNR {snr_db(y, x):.1f} dB | '
        f'MR-STFT {float(mrstft(jnp.asarray(y), jnp.asarray(x))):.4f} | '
        f'encode {1e3 * t_enc:.1f} ms, decode {1e3 * t_dec:.1f} ms per clip', flush=True)


def train_vae(vae: OobleckVAE, data: np.ndarray, steps: int, batch: int, crop: int,
              kl_weight: float, lr: float, seed: int = 0):
  """Adam (clipped at global norm 1) on L1 + MR-STFT + kl_weight·KL over random crops; returns (params, s/step)."""
  key = jax.random.PRNGKey(seed)
  params = vae.init(key, jnp.zeros((1, crop, 2)))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
  state = opt.init(params)

  def loss_fn(p, x, k):
    mean, sigma = vae.apply(p, x, method='posterior')
    z = mean + sigma * jax.random.normal(k, mean.shape)
    y = vae.apply(p, z, method='decode')
    kl = jnp.mean(jnp.sum(0.5 * (mean ** 2 + sigma ** 2 - 1) - jnp.log(sigma), -1))
    return jnp.mean(jnp.abs(y - x)) + mrstft(y, x) + kl_weight * kl

  @jax.jit
  def step(p, s, x, k):
    loss, g = jax.value_and_grad(loss_fn)(p, x, k)
    upd, s = opt.update(g, s, p)
    return optax.apply_updates(p, upd), s, loss

  rng = np.random.default_rng(seed)
  t_start = None
  for i in range(steps):
    rows = rng.integers(0, len(data), batch)
    starts = rng.integers(0, data.shape[1] - crop + 1, batch)
    x = np.stack([data[r, s:s + crop] for r, s in zip(rows, starts)])
    key, k = jax.random.split(key)
    params, state, loss = step(params, state, x, k)
    if i == 0:
      jax.block_until_ready(loss)
      t_start = time.perf_counter()
    if i % 50 == 0 or i == steps - 1:
      print(f'  vae step {i} loss {float(loss):.4f}', flush=True)
  per_step = (time.perf_counter() - t_start) / max(steps - 1, 1)
  return params, per_step


def trunk_cost(seq_len: int, io: int, embed: int, heads: int, mlp: int, head_dim: int = 16,
               batch: int = 8):
  """Seconds per jitted forward+backward of the tiny-depth MMDiT on one batch."""
  trunk = mmdit_lib.MMDiT(io_channels=io, embed_dim=embed, depth=4, num_heads=heads,
                          head_dim=head_dim, cond_dim=64, cond_len=64, seq_len=seq_len,
                          mlp_hidden=mlp)
  x = jnp.ones((batch, seq_len, io))
  t = jnp.full((batch,), 0.5)
  c = jnp.ones((batch, 64, 64))
  params = trunk.init(jax.random.PRNGKey(0), x, t, c)
  grad = jax.jit(jax.grad(lambda p: jnp.mean(trunk.apply(p, x, t, c) ** 2)))
  n = sum(v.size for v in jax.tree.leaves(params))
  print(f'[trunk T={seq_len} io={io} D={embed} heads={heads}x{head_dim} mlp={mlp}] {n / 1e6:.2f} M params, '
        f'fwd+bwd batch {batch}: {time_fn(grad, params, reps=3):.3f} s', flush=True)


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  args = types.SimpleNamespace(clips=_CLIPS.value, vae_steps=_VAE_STEPS.value,
                               vae_batch=_VAE_BATCH.value, vae_crop=_VAE_CROP.value,
                               kl_weight=_KL_WEIGHT.value, lr=_LR.value,
                               skip_trunk=_SKIP_TRUNK.value)
  print('devices', jax.devices())
  train, held = clips('train', args.clips), clips('heldout', args.clips // 2)
  print(f'data: train {train.shape}, heldout {held.shape}, std {train.std():.4f}')
  for hop in (64, 128, 256):
    for transform in ('dct', 'identity'):
      report(f'patch hop={hop} {transform} scale=1', PatchCodec(hop=hop, transform=transform),
             {}, held)
  vae = OobleckVAE(channels=16, c_mults=(1, 2, 4, 8), strides=(2, 4, 4, 8), latent_dim=16)
  report('oobleck tiny, random init', vae, vae.init(jax.random.PRNGKey(0), held[:1]), held)
  if args.vae_steps:
    params, per_step = train_vae(vae, train, args.vae_steps, args.vae_batch, args.vae_crop,
                                 args.kl_weight, args.lr)
    print(f'  {per_step:.3f} s/step (batch {args.vae_batch} x {args.vae_crop} samples), '
          f'{per_step * args.vae_steps / 60:.1f} min for {args.vae_steps} steps')
    report(f'oobleck tiny, trained {args.vae_steps} steps', vae, params, held)
  if not args.skip_trunk:
    trunk_cost(128, 16, 128, 8, 256)     # former tiny: Oobleck hop 256, 16 channels
    trunk_cost(256, 256, 128, 8, 256)    # patch hop 128, trunk width unchanged (rank < io)
    trunk_cost(256, 256, 256, 8, 256, 32)  # patch hop 128, width >= io: configs/tiny.py
    trunk_cost(256, 256, 256, 16, 512)   # same, wider FFN
    trunk_cost(128, 512, 512, 32, 1024)  # patch hop 256, width >= io
    trunk_cost(512, 128, 128, 8, 256)    # patch hop 64


if __name__ == '__main__':
  app.run(main)

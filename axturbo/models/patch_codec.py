"""Patch codec: an exactly invertible, parameter-free audio latent for small configs.

A stereo waveform (B, N, 2) is cut into T = N / hop frames of `hop` samples. Each frame is
rotated by a fixed orthonormal map and divided by a fixed scale:

  1. mid/side: m = (l + r) / √2, s = (l - r) / √2 (orthonormal; the side channel of the
     embedded data is small because its events are panned near the centre);
  2. an orthonormal DCT-II along the `hop` samples of each of m and s (transform='dct'), so
     latent channel k of each half is one frequency band of width sr / (2 hop): tonal events
     occupy a few fixed channels; transform='identity' keeps the raw samples instead;
  3. division by `scale` so that latents have about unit variance on the training data
     (rectified flow pairs data with N(0, 1) noise; docs/latent_codec.md has the measurement).

Latents are (B, T, 2 * hop), channels [mid bands ‖ side bands]. Decoding applies the inverse
(transpose) maps, so decode(encode(x)) == x up to float32 rounding (~1e-7 relative). The codec
has the interface of `axturbo.models.vae.OobleckVAE` (encode / decode / hop_length / __call__)
but no parameters: `init` gives an empty tree.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axturbo.models import layers

TRANSFORMS = ('dct', 'identity')
_ACT = ('act_batch', 'act_length', None)


@functools.lru_cache(maxsize=None)
def dct_matrix(n: int) -> np.ndarray:
  """Orthonormal DCT-II matrix (n, n), float64: row k = basis function k, D @ D.T = I.

  D[k, j] = sqrt(2 / n) · c_k · cos(π (j + 1/2) k / n), c_0 = 1/√2, c_k = 1 otherwise.
  """
  j = np.arange(n)[None, :]
  k = np.arange(n)[:, None]
  d = np.sqrt(2.0 / n) * np.cos(np.pi * (j + 0.5) * k / n)
  d[0] /= np.sqrt(2.0)
  return d


def frame_matrix(hop: int, transform: str) -> np.ndarray:
  """(hop, hop) orthonormal map applied to each frame of one channel, float32."""
  if transform == 'dct':
    return dct_matrix(hop).astype(np.float32)
  if transform == 'identity':
    return np.eye(hop, dtype=np.float32)
  raise ValueError(f'patch codec transform must be one of {TRANSFORMS}, got {transform!r}')


def encoded_length(n: int, hop: int) -> int:
  """Latent frames of an n-sample clip (n must be a multiple of hop; see `_check_audio`)."""
  return n // hop


class PatchCodec(nn.Module):
  """Fixed orthonormal frame transform: (B, N, 2) <-> (B, N / hop, 2 * hop).

  Attributes:
    hop: samples per latent frame (N must be a multiple of it).
    transform: 'dct' (mid/side + orthonormal DCT-II per frame) or 'identity' (mid/side only).
    scale: latents are the transformed frames divided by this (measured latent std).
    in_channels / out_channels: waveform channels; must be 2 (mid/side needs stereo).
    dtype: compute dtype of the two matmuls (float32 keeps the round trip exact).
  """
  hop: int = 128
  transform: str = 'dct'
  scale: float = 1.0
  in_channels: int = 2
  out_channels: int = 2
  dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    if self.hop < 1:
      raise ValueError(f'patch codec hop must be >= 1, got {self.hop}')
    if not self.scale > 0:
      raise ValueError(f'patch codec scale must be > 0, got {self.scale}')
    if self.in_channels != 2 or self.out_channels != 2:
      raise ValueError('patch codec needs stereo audio (in_channels = out_channels = 2), got '
                       f'{self.in_channels} / {self.out_channels}')
    frame_matrix(self.hop, self.transform)   # validates `transform` at construction

  @property
  def hop_length(self) -> int:
    return self.hop

  @property
  def latent_dim(self) -> int:
    return 2 * self.hop

  def __call__(self, audio: jax.Array) -> jax.Array:
    """Round trip (for `init`, which finds no parameters)."""
    return self.decode(self.encode(audio, deterministic=True))

  def encode(self, audio: jax.Array, noise: jax.Array | None = None, *,
             rng: jax.Array | None = None, deterministic: bool = False) -> jax.Array:
    """audio (B, N, 2), N = T·hop -> latents (B, T, 2·hop).

    The codec is deterministic (a point-mass posterior), so `rng` and `deterministic` are
    accepted for interface compatibility and ignored; `noise`, if given, must still have the
    latent shape (a wrong shape is a caller bug) and is ignored (its posterior sigma is 0).
    """
    del rng, deterministic
    _check_audio(audio, self.hop)
    b, n, _ = audio.shape
    frames = audio.astype(self.dtype).reshape(b, n // self.hop, self.hop, 2)
    mid_side = _mid_side(frames)                                  # (B, T, hop, 2)
    basis = jnp.asarray(frame_matrix(self.hop, self.transform), self.dtype)
    coeffs = jnp.einsum('kj,btjc->btck', basis, mid_side)         # (B, T, 2, hop)
    z = coeffs.reshape(b, n // self.hop, 2 * self.hop) / jnp.asarray(self.scale, self.dtype)
    if noise is not None and noise.shape != z.shape:
      raise ValueError(f'noise must have the latent shape {z.shape}, got {noise.shape}')
    return layers.constrain(z, _ACT)

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents (B, T, 2·hop) -> audio (B, T·hop, 2)."""
    if latents.ndim != 3 or latents.shape[-1] != 2 * self.hop:
      raise ValueError(f'latents must be (B, T, {2 * self.hop}), got {latents.shape}')
    b, t, _ = latents.shape
    coeffs = (latents.astype(self.dtype) * jnp.asarray(self.scale, self.dtype)
              ).reshape(b, t, 2, self.hop)
    basis = jnp.asarray(frame_matrix(self.hop, self.transform), self.dtype)
    mid_side = jnp.einsum('kj,btck->btjc', basis, coeffs)         # (B, T, hop, 2)
    return _mid_side(mid_side).reshape(b, t * self.hop, 2)


def _mid_side(x: jax.Array) -> jax.Array:
  """(..., 2) l, r -> (l + r, l - r) / √2; orthonormal and its own inverse."""
  l, r = x[..., 0], x[..., 1]
  return jnp.stack([l + r, l - r], axis=-1) * np.float32(np.sqrt(0.5))


def _check_audio(audio: jax.Array, hop: int) -> None:
  if audio.ndim != 3 or audio.shape[-1] != 2:
    raise ValueError(f'audio must be stereo (B, N, 2) channels-last, got {audio.shape}')
  if audio.shape[1] < hop or audio.shape[1] % hop:
    raise ValueError(f'audio length {audio.shape[1]} must be a positive multiple of the patch '
                     f'codec hop {hop} (pad or crop the clip; trailing samples would be lost)')

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

import jax
import jax.numpy as jnp
import numpy as np

from axturbo.models import frame_codec

TRANSFORMS = ('dct', 'identity')


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
  """Latent frames of an n-sample clip (n must be a multiple of hop; see `FrameCodec.encode`)."""
  return n // hop


class PatchCodec(frame_codec.FrameCodec):
  """Fixed orthonormal frame transform: (B, N, 2) <-> (B, N / hop, 2 * hop).

  Attributes:
    `frame_codec.FrameCodec`'s (hop, default 128; in_channels / out_channels, which must be
      2: mid/side needs stereo; dtype, whose float32 default keeps the round trip exact).
    transform: 'dct' (mid/side + orthonormal DCT-II per frame) or 'identity' (mid/side only).
    scale: latents are the transformed frames divided by this (measured latent std).
  """
  hop: int = 128
  transform: str = 'dct'
  scale: float = 1.0

  label = 'patch codec'

  def __post_init__(self):
    super().__post_init__()
    if not self.scale > 0:
      raise ValueError(f'patch codec scale must be > 0, got {self.scale}')
    frame_matrix(self.hop, self.transform)   # validates `transform` at construction

  @property
  def latent_dim(self) -> int:
    return 2 * self.hop

  def _encode(self, audio: jax.Array) -> jax.Array:
    b, n, _ = audio.shape
    frames = audio.astype(self.dtype).reshape(b, n // self.hop, self.hop, 2)
    mid_side = _mid_side(frames)                                  # (B, T, hop, 2)
    basis = jnp.asarray(frame_matrix(self.hop, self.transform), self.dtype)
    coeffs = jnp.einsum('kj,btjc->btck', basis, mid_side)         # (B, T, 2, hop)
    return coeffs.reshape(b, n // self.hop, 2 * self.hop) / jnp.asarray(self.scale, self.dtype)

  def _decode(self, latents: jax.Array) -> jax.Array:
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


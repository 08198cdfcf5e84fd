"""What the parameter-free codecs (`patch_codec`, `mel_codec`) share.

Both cut a stereo waveform (B, N, 2) into T = N / hop latent frames and have the interface of
`vae.OobleckVAE` (encode / decode / hop_length / latent_dim / __call__) with no parameters:
`init` gives an empty tree.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.models import layers

_ACT = ('act_batch', 'act_length', None)


class FrameCodec(nn.Module):
  """Base of a parameter-free stereo codec with one latent frame per `hop` samples.

  A subclass sets `label` (how errors name it) and defines `latent_dim`, `_encode` (checked
  (B, N, 2) audio -> (B, T, latent_dim)) and `_decode` (checked latents -> (B, T·hop, 2)).

  Attributes:
    hop: samples per latent frame (N must be a positive multiple of it).
    in_channels / out_channels: waveform channels; must be 2.
    dtype: compute dtype.
  """
  hop: int
  in_channels: int = 2
  out_channels: int = 2
  dtype: jnp.dtype = jnp.float32

  label = 'frame codec'

  def __post_init__(self):
    super().__post_init__()
    if self.hop < 1:
      raise ValueError(f'{self.label} hop must be >= 1, got {self.hop}')
    if self.in_channels != 2 or self.out_channels != 2:
      raise ValueError(f'{self.label} needs stereo audio (in_channels = out_channels = 2), '
                       f'got {self.in_channels} / {self.out_channels}')

  @property
  def hop_length(self) -> int:
    return self.hop

  @property
  def latent_dim(self) -> int:
    raise NotImplementedError

  def __call__(self, audio: jax.Array) -> jax.Array:
    """Round trip (for `init`, which finds no parameters)."""
    return self.decode(self.encode(audio, deterministic=True))

  def encode(self, audio: jax.Array, noise: jax.Array | None = None, *,
             rng: jax.Array | None = None, deterministic: bool = False) -> jax.Array:
    """audio (B, N, 2), N = T·hop -> latents (B, T, latent_dim).

    The codec is deterministic (a point-mass posterior), so `rng` and `deterministic` are
    accepted for interface compatibility and ignored; `noise`, if given, must still have the
    latent shape (a wrong shape is a caller bug) and is ignored (its posterior sigma is 0).
    """
    del rng, deterministic
    if audio.ndim != 3 or audio.shape[-1] != 2:
      raise ValueError(f'audio must be stereo (B, N, 2) channels-last, got {audio.shape}')
    if audio.shape[1] < self.hop or audio.shape[1] % self.hop:
      raise ValueError(f'audio length {audio.shape[1]} must be a positive multiple of the '
                       f'{self.label} hop {self.hop} (pad or crop the clip; trailing samples '
                       'would be lost)')
    z = self._encode(audio)
    if noise is not None and noise.shape != z.shape:
      raise ValueError(f'noise must have the latent shape {z.shape}, got {noise.shape}')
    return layers.constrain(z, _ACT)

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents (B, T, latent_dim) -> audio (B, T·hop, 2)."""
    if latents.ndim != 3 or latents.shape[-1] != self.latent_dim:
      raise ValueError(f'latents must be (B, T, {self.latent_dim}), got {latents.shape}')
    return self._decode(latents)

  def _encode(self, audio: jax.Array) -> jax.Array:
    raise NotImplementedError

  def _decode(self, latents: jax.Array) -> jax.Array:
    raise NotImplementedError

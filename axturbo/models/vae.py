"""Oobleck VAE: the 44.1 kHz stereo waveform <-> 64-channel latent autoencoder (x2048 in time).

Everything is channels-last: waveforms (B, N, C), latents (B, T, latent_dim). Weight norm is
folded into plain kernels when a checkpoint is converted, so the convolutions here are ordinary.
The encoder emits mean ‖ scale (2 * latent_dim channels); `OobleckVAE.encode` turns those into a
posterior sample the way the official VAE bottleneck does.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.models import layers

Dtype = jnp.dtype
_SNAKE_EPS = 1e-9
_SIGMA_FLOOR = 1e-4
_ACT = ('act_batch', 'act_length', None)


class SnakeBeta(nn.Module):
  """y = x + sin²(e^α x) / (e^β + 1e-9), with per-channel α, β stored as logs (init 0).

  Attributes:
    features: channel count C.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, C) -> (B, T, C)."""
    init = layers.named_init(nn.initializers.zeros_init(), ('channels',))
    log_alpha = self.param('alpha', init, (self.features,), jnp.float32)
    log_beta = self.param('beta', init, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    alpha = jnp.exp(log_alpha).astype(self.dtype)
    beta = jnp.exp(log_beta).astype(self.dtype)
    return x + (1.0 / (beta + _SNAKE_EPS)) * jnp.square(jnp.sin(x * alpha))


class ConvTranspose1d(nn.Module):
  """PyTorch ConvTranspose1d(stride s, padding p) on channels-last input.

  The kernel is stored in forward-conv layout (k, in, out), already flipped along k, so the
  transposed conv is a stride-1 conv over the input dilated by s with (k - 1 - p) zeros each side.
  Output length (L - 1)·s - 2p + k, exactly as torch (= L·s for the Oobleck k = 2s, p = ⌈s/2⌉,
  s even).
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, L, C_in) -> (B, (L-1)·s - 2p + k, features)."""
    kernel = self.param(
        'kernel', layers.named_init(nn.initializers.lecun_normal(),
                                    ('conv_width', 'channels', 'channels_out')),
        (self.kernel_size, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', layers.named_init(nn.initializers.zeros_init(), ('channels',)),
                      (self.features,), jnp.float32)
    edge = self.kernel_size - 1 - self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,),
        padding=[(edge, edge)], lhs_dilation=(self.stride,),
        dimension_numbers=('NWC', 'WIO', 'NWC'))
    return y + bias.astype(self.dtype)


def _conv(features: int, k: int, dtype: Dtype, name: str, **kw) -> nn.Conv:
  return layers.conv1d(features, k, ('channels', 'channels_out'), dtype=dtype, name=name, **kw)


class ResidualUnit(nn.Module):
  """x + Conv1x1(Snake(Conv7_dilated(Snake(x)))), length preserving."""
  channels: int
  dilation: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, C) -> (B, T, C)."""
    y = SnakeBeta(self.channels, self.dtype, name='snake_0')(x)
    y = _conv(self.channels, 7, self.dtype, 'conv_0', dilation=self.dilation,
              padding=3 * self.dilation)(y)
    y = SnakeBeta(self.channels, self.dtype, name='snake_1')(y)
    # Zero-initialised branch (SkipInit): a random stack of doubling residuals would amplify
    # its input ~100x, and tiny configs keep a random, frozen prompt encoder.
    y = _conv(self.channels, 1, self.dtype, 'conv_1',
              kernel_init=nn.initializers.zeros_init())(y)
    return x.astype(self.dtype) + y


class _ResolutionStep(nn.Module):
  """A block between two resolutions: its fields and its three residual units (dilation 1, 3,
  9). Encoder and decoder blocks resample with k = 2s, p = ⌈s/2⌉."""
  in_channels: int
  out_channels: int
  stride: int
  dtype: Dtype = jnp.float32

  def _residual_units(self, x: jax.Array, channels: int) -> jax.Array:
    for i, d in enumerate((1, 3, 9)):
      x = ResidualUnit(channels, d, self.dtype, name=f'res_{i}')(x)
    return x


class EncoderBlock(_ResolutionStep):
  """Three residual units, Snake, then a strided conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, L, C_in) -> (B, ⌊(L + 2⌈s/2⌉ - 2s)/s⌋ + 1, C_out) (= ⌊L/s⌋ for even s)."""
    x = self._residual_units(x, self.in_channels)
    x = SnakeBeta(self.in_channels, self.dtype, name='snake')(x)
    s = self.stride
    return _conv(self.out_channels, 2 * s, self.dtype, 'conv', stride=s,
                 padding=math.ceil(s / 2))(x)


class DecoderBlock(_ResolutionStep):
  """Snake, transposed conv (x s in time), three residual units."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, L, C_in) -> (B, L·s, C_out) for even s."""
    s = self.stride
    x = SnakeBeta(self.in_channels, self.dtype, name='snake')(x)
    x = ConvTranspose1d(self.out_channels, 2 * s, s, math.ceil(s / 2), self.dtype,
                        name='conv_t')(x)
    return self._residual_units(x, self.out_channels)


class OobleckWidths(nn.Module):
  """The fields every Oobleck network has, and the skeleton its encoder and decoder mirror.
  Subclasses add their fields after these, so construct them by keyword.

  Attributes:
    channels: base width (128).
    c_mults: width multipliers per block ([1, 2, 4, 8, 16]; a leading 1 is implied).
    strides: per-block time strides ([2, 4, 4, 8, 8], product 2048).
    dtype: compute dtype (the official VAE always runs in float32).
  """
  channels: int = 128
  c_mults: Sequence[int] = (1, 2, 4, 8, 16)
  strides: Sequence[int] = (2, 4, 4, 8, 8)
  dtype: Dtype = jnp.float32

  @property
  def widths(self) -> list[int]:
    """Channel count at each resolution: the official code prepends a multiplier of 1."""
    return [self.channels * m for m in (1, *self.c_mults)]

  def _blocks(self, x: jax.Array, block: type[nn.Module], widths: Sequence[int],
              strides: Sequence[int]) -> jax.Array:
    """conv_in, then block_i (widths[i] -> widths[i + 1], stride strides[i]), then Snake.

    The decoder runs this with widths and strides reversed.
    """
    x = _conv(widths[0], 7, self.dtype, 'conv_in')(x)
    for i, s in enumerate(strides):
      x = block(widths[i], widths[i + 1], s, self.dtype, name=f'block_{i}')(x)
      x = layers.constrain(x, _ACT)
    return SnakeBeta(widths[-1], self.dtype, name='snake_out')(x)


class OobleckFields(OobleckWidths):
  """The fields of a whole autoencoder (`OobleckVAE`, and the audio prompt's VAE copy).

  Attributes:
    latent_dim: latent channels (64); the encoder emits 2 * latent_dim (mean ‖ scale).
    in_channels / out_channels: waveform channels (2).
  """
  latent_dim: int = 64
  in_channels: int = 2
  out_channels: int = 2


def _width_fields(cfg: OobleckWidths) -> dict:
  """cfg's `OobleckWidths` fields as keyword arguments (sequences as tuples: fields are hashed)."""
  return dict(channels=cfg.channels, c_mults=tuple(cfg.c_mults), strides=tuple(cfg.strides),
              dtype=cfg.dtype)


class OobleckEncoder(OobleckWidths):
  """Waveform (B, N, in_channels) -> (B, T, out_features); T = N floored through each stride."""
  out_features: int = 128
  in_channels: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self._blocks(x, EncoderBlock, self.widths, self.strides)
    return _conv(self.out_features, 3, self.dtype, 'conv_out')(x)


class OobleckDecoder(OobleckWidths):
  """Latents (B, T, C) -> waveform (B, T·prod(strides), out_channels); no final tanh.

  C (the VAE's latent_dim) is read from the input by the first convolution.
  """
  out_channels: int = 2

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = self._blocks(z, DecoderBlock, self.widths[::-1], self.strides[::-1])
    return _conv(self.out_channels, 7, self.dtype, 'conv_out', use_bias=False)(x)


def encoded_length(n: int, strides: Sequence[int]) -> int:
  """Latent frames the encoder produces from n samples (torch's conv length rule per block)."""
  for s in strides:
    n = (n + 2 * math.ceil(s / 2) - 2 * s) // s + 1
  return n


class OobleckVAE(OobleckFields):
  """The official AudioAutoencoder with its VAE bottleneck (no latent scaling: scale = 1).

  Fields: those of `OobleckFields`, whose defaults are the released VAE's.
  """

  def setup(self):
    self.encoder = make_encoder(self)
    self.decoder = OobleckDecoder(**_width_fields(self), out_channels=self.out_channels)

  @property
  def hop_length(self) -> int:
    return math.prod(self.strides)

  def __call__(self, audio: jax.Array) -> jax.Array:
    """Deterministic round trip (posterior mean), used to initialize both halves."""
    return self.decode(self.encode(audio, deterministic=True))

  def posterior(self, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """audio (B, N, in_channels) -> (mean, sigma), each (B, T, latent_dim)."""
    _check_audio(audio, self.in_channels, self.strides)
    return split_posterior(self.encoder(audio))

  def encode(self, audio: jax.Array, noise: jax.Array | None = None, *,
             rng: jax.Array | None = None, deterministic: bool = False) -> jax.Array:
    """audio (B, N, in_channels) -> latents (B, T, latent_dim), T = N floored per stride.

    Samples z = mean + sigma * eps like the official bottleneck unless `deterministic` (mean).
    eps is `noise` (B, T, latent_dim) if given, else drawn from `rng`, else from the 'sample'
    rng stream.
    """
    mean, sigma = self.posterior(audio)
    if deterministic:
      return mean
    return mean + sigma * _posterior_noise(self, mean, noise, rng)

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents (B, T, latent_dim) -> audio (B, T * prod(strides), out_channels)."""
    if latents.ndim != 3 or latents.shape[-1] != self.latent_dim:
      raise ValueError(f'latents must be (B, T, {self.latent_dim}), got {latents.shape}')
    return self.decoder(latents)


def make_encoder(cfg: OobleckFields, name: str | None = None) -> OobleckEncoder:
  """The VAE encoder of an autoencoder config (its mean ‖ scale output: 2 * latent_dim)."""
  return OobleckEncoder(**_width_fields(cfg), out_features=2 * cfg.latent_dim,
                        in_channels=cfg.in_channels, name=name)


def split_posterior(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(B, T, 2D) mean ‖ scale -> (mean, softplus(scale) + 1e-4), each (B, T, D)."""
  mean, scale = jnp.split(moments, 2, axis=-1)
  return mean, jax.nn.softplus(scale) + _SIGMA_FLOOR


def _posterior_noise(module: nn.Module, mean: jax.Array, noise, rng) -> jax.Array:
  if noise is not None:
    if noise.shape != mean.shape:
      raise ValueError(f'noise must have the latent shape {mean.shape}, got {noise.shape}')
    return noise.astype(mean.dtype)
  if rng is None:
    rng = module.make_rng('sample')
  return jax.random.normal(rng, mean.shape, mean.dtype)


def _check_audio(audio: jax.Array, channels: int, strides: Sequence[int]) -> None:
  if audio.ndim != 3 or audio.shape[-1] != channels:
    raise ValueError(f'audio must be (B, N, {channels}) channels-last, got {audio.shape}')
  if encoded_length(audio.shape[1], strides) < 1:
    raise ValueError(f'audio of {audio.shape[1]} samples is too short for strides {strides}')

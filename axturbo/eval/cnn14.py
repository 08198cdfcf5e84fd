"""PANNs CNN14 audio tagger (Kong et al. 2020) in Flax, for the FD / KL / IS metrics.

Inference only. Audio (B, N) at `sample_rate` -> log-mel (B, T, mel_bins) -> BatchNorm over mel
bins -> six blocks of [3x3 conv, BN, ReLU] x 2 + 2x2 average pooling (none after the last) ->
mean over mel -> max + mean over time -> fc1 + ReLU = the 2048-d embedding -> fc_audioset = 527
AudioSet logits (sigmoid = clip-wise tag probabilities).

Layout: channels-last, images are (B, time, mel, C). Convolution kernels are
(k_time, k_mel, C_in, C_out). BatchNorm layers are frozen (eval-mode running statistics); their
four vectors live in 'params' so that a converted checkpoint is one tree with logical axis names.
The STFT / mel front end holds no parameters: its kernels are functions of the config, and the
loader checks that a checkpoint's stored copies agree with them.

Two published configurations (audioldm_eval uses the 16 kHz one when evaluating at 16 kHz):
  CNN14_32K: Cnn14_mAP=0.431.pth, 32 kHz, n_fft 1024, hop 320, 64 mels in 50-14000 Hz.
  CNN14_16K: Cnn14_16k_mAP=0.438.pth, 16 kHz, n_fft 512, hop 160, 64 mels in 50-8000 Hz.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axturbo.models import layers

CNN14_32K = dict(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50.0,
                 fmax=14000.0)
CNN14_16K = dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50.0,
                 fmax=8000.0)
CHANNELS = (64, 128, 256, 512, 1024, 2048)
AMIN = 1e-10      # power floor before the log (torchlibrosa power_to_db, ref = 1, no top_db)
BN_EPS = 1e-5     # torch BatchNorm default
_PRECISION = jax.lax.Precision.HIGHEST  # float32 matmuls on TPU too: metrics must match PyTorch


@functools.lru_cache(maxsize=8)
def stft_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
  """Real and imaginary DFT kernels (n_fft, n_fft // 2 + 1) with a periodic Hann window.

  real[n, k] = w[n] cos(2 pi n k / N), imag[n, k] = -w[n] sin(2 pi n k / N): a windowed frame
  times these gives its rfft. (n k) mod N keeps the angles exact for large N.
  """
  n = np.arange(n_fft)
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
  angle = 2.0 * np.pi * ((n[:, None] * np.arange(n_fft // 2 + 1)[None]) % n_fft) / n_fft
  return window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)


def _hz_to_mel(f):
  """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
  f = np.asarray(f, np.float64)
  log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
  return np.where(f >= 1000.0, log_part, f / (200.0 / 3.0))


def _mel_to_hz(m):
  m = np.asarray(m, np.float64)
  return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)),
                  (200.0 / 3.0) * m)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
                   ) -> np.ndarray:
  """(n_fft // 2 + 1, n_mels) Slaney-normalized triangular filters on the Slaney mel scale.

  The filters librosa.filters.mel builds by default (htk=False, norm='slaney'), which the
  PANNs front end multiplies power spectra by.
  """
  fft_freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
  edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
  lower = (fft_freqs[None] - edges[:-2, None]) / np.diff(edges)[:-1, None]
  upper = (edges[2:, None] - fft_freqs[None]) / np.diff(edges)[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
  return weights.T


def log_mel(audio: jax.Array, sample_rate: int, window_size: int, hop_size: int, mel_bins: int,
            fmin: float, fmax: float) -> jax.Array:
  """(B, N) audio -> (B, 1 + N // hop_size, mel_bins) log-mel power in dB.

  Frames are centred (reflect padding of window_size // 2 on both sides); 10 log10(max(P, AMIN)).
  """
  if audio.ndim != 2:
    raise ValueError(f'audio must be (batch, samples), got shape {audio.shape}')
  pad = window_size // 2
  if audio.shape[1] <= pad:
    raise ValueError(f'audio has {audio.shape[1]} samples; reflect padding needs > {pad}')
  x = jnp.pad(audio.astype(jnp.float32), ((0, 0), (pad, pad)), mode='reflect')
  num_frames = 1 + audio.shape[1] // hop_size
  idx = np.arange(num_frames)[:, None] * hop_size + np.arange(window_size)[None]
  frames = x[:, idx]                                           # (B, T, window_size)
  real, imag = (jnp.asarray(k, jnp.float32) for k in stft_kernels(window_size))
  re = jnp.einsum('btn,nk->btk', frames, real, precision=_PRECISION)
  im = jnp.einsum('btn,nk->btk', frames, imag, precision=_PRECISION)
  mel = jnp.asarray(mel_filterbank(sample_rate, window_size, mel_bins, fmin, fmax), jnp.float32)
  power = jnp.einsum('btk,km->btm', re * re + im * im, mel, precision=_PRECISION)
  return 10.0 * jnp.log10(jnp.maximum(power, AMIN))


class FrozenBatchNorm(nn.Module):
  """Eval-mode BatchNorm over the last axis: (x - mean) / sqrt(var + eps) * scale + bias."""
  axis_name: str = 'norm'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    init = lambda value: layers.named_init(  # noqa: E731
        lambda key, shape: jnp.full(shape, value, jnp.float32), (self.axis_name,))
    scale = self.param('scale', init(1.0), (c,))
    bias = self.param('bias', init(0.0), (c,))
    mean = self.param('mean', init(0.0), (c,))
    var = self.param('var', init(1.0), (c,))
    return (x - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias


class ConvBlock(nn.Module):
  """(B, T, F, C_in) -> (B, T / p, F / p, features): [conv3x3 -> BN -> ReLU] x 2, avg-pool p."""
  features: int
  pool: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in (1, 2):
      x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  precision=_PRECISION,
                  kernel_init=layers.named_init(nn.initializers.lecun_normal(),
                                                ('conv_height', 'conv_width', 'channels',
                                                 'channels_out')),
                  name=f'conv{i}')(x)
      x = nn.relu(FrozenBatchNorm(name=f'bn{i}')(x))
    if self.pool > 1:  # floor division of odd sizes, as torch avg_pool2d does
      x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool), padding='VALID')
    return x


class Cnn14(nn.Module):
  """PANNs CNN14; `channels`, `embed_dim` and `num_classes` shrink it for tests.

  __call__(audio (B, N) float in [-1, 1]) -> (embedding (B, embed_dim), logits (B, num_classes)).
  """
  sample_rate: int = 32000
  window_size: int = 1024
  hop_size: int = 320
  mel_bins: int = 64
  fmin: float = 50.0
  fmax: float = 14000.0
  num_classes: int = 527
  channels: Sequence[int] = CHANNELS
  embed_dim: int = 2048

  @nn.compact
  def __call__(self, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = log_mel(audio, self.sample_rate, self.window_size, self.hop_size, self.mel_bins,
                self.fmin, self.fmax)                          # (B, T, mel)
    x = FrozenBatchNorm(name='bn0')(x)[..., None]              # per-mel-bin normalization
    for i, c in enumerate(self.channels):
      x = ConvBlock(c, pool=2 if i < len(self.channels) - 1 else 1, name=f'conv_block{i + 1}')(x)
    x = jnp.mean(x, axis=2)                                    # (B, T', C): mean over mel
    x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)               # (B, C)
    dense = functools.partial(layers.dense, kernel_init=nn.initializers.lecun_normal())
    embedding = nn.relu(dense(self.embed_dim, ('channels', 'embed'), name='fc1')(x))
    logits = dense(self.num_classes, ('embed', None), name='fc_audioset')(embedding)
    return embedding, logits

  def num_frames(self, num_samples: int) -> int:
    return 1 + num_samples // self.hop_size


def build_cnn14(variant: str = '32k', **overrides) -> Cnn14:
  """Cnn14 with a published front end ('32k' or '16k'); `overrides` change any field."""
  presets = {'32k': CNN14_32K, '16k': CNN14_16K}
  if variant not in presets:
    raise ValueError(f"variant must be one of {sorted(presets)}, got {variant!r}")
  return Cnn14(**{**presets[variant], **overrides})


def prepare_audio(audio, sample_rate: int, target_rate: int) -> np.ndarray:
  """(B, N) or (B, N, C) float audio -> (B, N') mono at target_rate (polyphase resampling).

  Channels are averaged (the classifier is mono); 44.1 kHz -> 32 kHz is the 320/441 ratio.
  """
  from scipy import signal  # local: scipy is only needed when resampling
  x = np.asarray(audio, np.float32)
  if x.ndim == 3:
    x = x.mean(axis=-1)
  if x.ndim != 2:
    raise ValueError(f'audio must be (batch, samples) or (batch, samples, channels), got {x.shape}')
  if sample_rate != target_rate:
    g = np.gcd(int(sample_rate), int(target_rate))
    x = signal.resample_poly(x, target_rate // g, sample_rate // g, axis=1).astype(np.float32)
  return x

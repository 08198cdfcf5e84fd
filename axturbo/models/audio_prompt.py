"""Audio-prompt conditioner: waveform prompt -> (B, 128, 768) conditioning tokens.

Official pipeline (AudioAutoencoderConditioner): right-pad prompts to a common length, make them
stereo, zero a random waveform span (the official code does this always, also at inference),
encode with the conditioner's own VAE encoder and sample the posterior, map the latent time axis
215 -> 128 with a learned linear map, then project the 64 latent channels to 768.

Span masking here is off unless `official_masking` is set or explicit spans are passed.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axturbo.models import layers
from axturbo.models import vae


def to_stereo(audio):
  """(B, N, C) -> (B, N, 2): mono is duplicated, channels beyond two are dropped (official rule)."""
  if audio.ndim != 3 or audio.shape[-1] < 1:
    raise ValueError(f'audio must be (B, N, C) channels-last, got {audio.shape}')
  if audio.shape[-1] == 1:
    return jnp.concatenate([audio, audio], axis=-1)
  return audio[..., :2]


def batch_prompts(prompts: Sequence[np.ndarray]) -> np.ndarray:
  """Host-side batching: list of (N_i, C_i) or (N_i,) waveforms -> (B, max N_i, 2) float32.

  Each prompt is made stereo, then right-padded with zeros to the longest one.
  """
  if not prompts:
    raise ValueError('batch_prompts needs at least one prompt')
  stereo = []
  for i, p in enumerate(prompts):
    p = np.asarray(p, np.float32)
    p = p[:, None] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[-1] < 1:
      raise ValueError(f'prompt {i} must be (N,) or (N, C), got {p.shape}')
    stereo.append(np.repeat(p, 2, axis=-1) if p.shape[-1] == 1 else p[:, :2])
  n = max(p.shape[0] for p in stereo)
  return np.stack([np.pad(p, ((0, n - p.shape[0]), (0, 0))) for p in stereo])


def random_spans(key: jax.Array, batch: int, n: int,
                 ratio_range: tuple[float, float] = (0.25, 0.75)) -> tuple[jax.Array, jax.Array]:
  """Per sample r ~ U(lo, hi), length = ⌊n·r⌋ (float32 product), start ~ U{0, …, n - length}.

  Returns (starts, lengths), each int32 (batch,).
  """
  k_ratio, k_start = jax.random.split(key)
  lo, hi = ratio_range
  ratios = jax.random.uniform(k_ratio, (batch,), jnp.float32, lo, hi)
  lengths = jnp.floor(jnp.float32(n) * ratios).astype(jnp.int32)
  starts = jax.random.randint(k_start, (batch,), 0, n - lengths + 1, jnp.int32)
  return starts, lengths


def apply_spans(audio: jax.Array, starts: jax.Array, lengths: jax.Array) -> jax.Array:
  """Zeros audio[b, starts[b]:starts[b]+lengths[b], :] in (B, N, C) audio."""
  t = jnp.arange(audio.shape[1])[None, :]
  starts = jnp.asarray(starts)[:, None]
  inside = (t >= starts) & (t < starts + jnp.asarray(lengths)[:, None])
  return jnp.where(inside[..., None], jnp.zeros((), audio.dtype), audio)


def mask_audio(key: jax.Array, audio: jax.Array,
               ratio_range: tuple[float, float] = (0.25, 0.75)
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The official random span masking on (B, N, C) audio -> (masked, starts, lengths)."""
  starts, lengths = random_spans(key, audio.shape[0], audio.shape[1], ratio_range)
  return apply_spans(audio, starts, lengths), starts, lengths


def posterior_sample(mean: jax.Array, sigma: jax.Array, noise: jax.Array | None,
                     key: jax.Array | None, deterministic: bool) -> jax.Array:
  """The VAE posterior's mean, `mean + sigma * noise`, or a fresh sample from `key`."""
  if deterministic:
    return mean
  if noise is not None:
    if noise.shape != mean.shape:
      raise ValueError(f'noise must have the latent shape {mean.shape}, got {noise.shape}')
    return mean + sigma * noise.astype(mean.dtype)
  return mean + sigma * jax.random.normal(key, mean.shape, mean.dtype)


class AudioPromptConditioner(vae.OobleckFields):
  """Audio prompt -> conditioning tokens, with its own copy of the VAE encoder (official) or
  through a given parameter-free codec (the target's, e.g. the small configs' log-mel codec).

  Attributes:
    `vae.OobleckFields`: the VAE copy's config (`out_channels` only sizes the unused decoder
      that conversion skips; `dtype` is also the compute dtype of the maps below).
    latent_seq_len: latent frames of a prompt (215 for 441000 samples); input of the time map.
    prompt_tokens: output tokens of the time map (128).
    output_dim: token width (768).
    official_masking: zero a random waveform span like the official code (always on there).
    mask_ratio_start, mask_ratio_end: span length range as a fraction of the prompt.
    codec: None (own VAE encoder, the fields above) or a parameter-free codec module whose
      deterministic `encode` gives the (B, latent_seq_len, C) prompt latents.
  """
  latent_seq_len: int = 215
  prompt_tokens: int = 128
  output_dim: int = 768
  official_masking: bool = False
  mask_ratio_start: float = 0.25
  mask_ratio_end: float = 0.75
  codec: nn.Module | None = None

  @nn.compact
  def __call__(self, audio: jax.Array, *, spans: tuple[jax.Array, jax.Array] | None = None,
               noise: jax.Array | None = None, rng: jax.Array | None = None,
               deterministic: bool = False) -> jax.Array:
    """audio (B, N, C), C = 1 (duplicated) or 2, already right-padded (see `batch_prompts`).

    Args:
      spans: explicit (starts, lengths), int (B,), to zero instead of any random masking.
      noise: posterior eps (B, latent_seq_len, latent_dim); drawn from `rng` when omitted.
      rng: key for masking and posterior noise; defaults to the 'sample' rng stream.
      deterministic: use the posterior mean (not what the official code does).

    Returns:
      (B, prompt_tokens, output_dim) tokens.
    """
    audio = to_stereo(audio).astype(self.dtype)
    n = audio.shape[1]
    frames = (n // self.codec.hop_length if self.codec is not None
              else vae.encoded_length(n, self.strides))
    if frames != self.latent_seq_len:
      raise ValueError(f'a prompt of {n} samples gives {frames} latent frames, expected '
                       f'latent_seq_len={self.latent_seq_len}')
    stochastic = self.codec is None and noise is None and not deterministic
    needs_rng = (spans is None and self.official_masking) or stochastic
    if rng is None and needs_rng:
      rng = self.make_rng('sample')
    mask_key, noise_key = jax.random.split(rng) if needs_rng else (None, None)
    if spans is not None:
      audio = apply_spans(audio, *spans)
    elif self.official_masking:
      audio, _, _ = mask_audio(mask_key, audio, (self.mask_ratio_start, self.mask_ratio_end))

    if self.codec is not None:
      z = self.codec.encode(audio, noise, deterministic=True).astype(self.dtype)
    else:
      mean, sigma = vae.split_posterior(vae.make_encoder(self, name='encoder')(audio))
      z = posterior_sample(mean, sigma, noise, noise_key, deterministic)

    # The time map mixes latent frames per channel: (B, T, D) -> (B, D, T) -> (B, D, 128).
    z = layers.dense(self.prompt_tokens, ('length', 'length_out'), dtype=self.dtype,
                     name='proj_features_128')(jnp.swapaxes(z, 1, 2))
    tokens = layers.dense(self.output_dim, ('channels', 'embed'), dtype=self.dtype,
                          name='proj_out')(jnp.swapaxes(z, 1, 2))
    return layers.constrain(tokens, ('act_batch', 'act_length', 'act_embed'))

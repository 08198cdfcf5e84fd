"""The audio latent codec of a model config: `config.model.codec` picks the module.

  'oobleck': the official Oobleck VAE (`axturbo.models.vae`), sized by `config.model.vae`.
  'patch':   the fixed invertible frame transform (`axturbo.models.patch_codec`), sized by
             `config.model.patch` (hop, transform, scale); no parameters, no download.
  'mel':     the normalised log-mel magnitude with a Griffin-Lim decoder
             (`axturbo.models.mel_codec`), sized by `config.model.mel`; no parameters, lossy.

All have the same interface (encode / decode / hop_length / __call__ for init). The
audio-prompt conditioner encodes prompts with its own Oobleck encoder (`config.model.vae`), as
officially, unless `config.model.audio_prompt.encoder == 'codec'`: then with this codec.
A config without a `codec` field (e.g. a model_config.json saved before the field existed)
means 'oobleck'.
"""
import math

import jax.numpy as jnp
import ml_collections as mlc

from axturbo.models import mel_codec as mel_lib
from axturbo.models import patch_codec as patch_lib
from axturbo.models import vae as vae_lib

CODECS = ('oobleck', 'patch', 'mel')
Codec = vae_lib.OobleckVAE | patch_lib.PatchCodec | mel_lib.MelCodec


def codec_name(m: mlc.ConfigDict) -> str:
  """`model.codec`, validated ('oobleck' when absent)."""
  name = m.get('codec', 'oobleck')
  if name not in CODECS:
    raise ValueError(f'model.codec must be one of {CODECS}, got {name!r}')
  if name in ('patch', 'mel') and name not in m:
    raise ValueError(f'model.codec={name!r} needs a model.{name} section')
  return name


def build_codec(m: mlc.ConfigDict, dtype=jnp.float32) -> Codec:
  """The latent codec module for a `config.model` section (float32 compute by default)."""
  if codec_name(m) == 'patch':
    return patch_lib.PatchCodec(**m.patch, dtype=dtype)
  if codec_name(m) == 'mel':
    return mel_lib.MelCodec(sample_rate=m.sample_rate, **m.mel, dtype=dtype)
  return vae_lib.OobleckVAE(**m.vae, dtype=dtype)


def hop_length(m: mlc.ConfigDict) -> int:
  """Waveform samples per latent frame."""
  if codec_name(m) in ('patch', 'mel'):
    return m[codec_name(m)].hop
  return math.prod(m.vae.strides)


def latent_shape(m: mlc.ConfigDict, num_samples: int) -> tuple[int, int]:
  """(frames T, channels C) of the latents the codec makes from a `num_samples` clip."""
  if codec_name(m) == 'patch':
    if num_samples % m.patch.hop:
      raise ValueError(f'{num_samples} samples is not a multiple of model.patch.hop='
                       f'{m.patch.hop} (the patch codec would drop the remainder)')
    return patch_lib.encoded_length(num_samples, m.patch.hop), 2 * m.patch.hop
  if codec_name(m) == 'mel':
    if num_samples % m.mel.hop:
      raise ValueError(f'{num_samples} samples is not a multiple of model.mel.hop='
                       f'{m.mel.hop} (the mel codec would drop the remainder)')
    return num_samples // m.mel.hop, m.mel.n_mels
  return vae_lib.encoded_length(num_samples, m.vae.strides), m.vae.latent_dim

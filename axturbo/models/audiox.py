"""AudioX: every network of AudioX-Turbo under one module definition.

Parameter tree (one per network role; teacher, student and fake model differ only in
'maf' and 'trunk', and share the frozen towers):

  {'text':  T5 encoder,          'clip': CLIP vision tower,
   'video': video conditioner,   'audio_prompt': audio-prompt conditioner (own VAE encoder,
                                 or none when it shares the parameter-free target codec),
   'maf':   fusion block,        'trunk': MMDiT velocity predictor,
   'vae':   latent codec of the target audio (`model.codec`: the Oobleck VAE, or a
            parameter-free patch or log-mel codec, which adds no 'vae' entry)}

Each method touches only the subtrees it needs, so `apply` can be called with a partial tree
(e.g. {'maf', 'trunk'} for `fuse` + `velocity`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc

from axturbo.models import audio_prompt as audio_prompt_lib
from axturbo.models import clip as clip_lib
from axturbo.models import codec as codec_lib
from axturbo.models import maf as maf_lib
from axturbo.models import mmdit as mmdit_lib
from axturbo.models import synchformer
from axturbo.models import t5 as t5_lib
from axturbo.models import vae as vae_lib
from axturbo.models import video_cond as video_lib


class AudioX(nn.Module):
  """Conditioners + MAF + MMDiT + latent codec. Build it with `build_model(config.model)`."""
  text: t5_lib.T5Conditioner
  clip: clip_lib.CLIPVisionTower
  video: video_lib.VideoConditioner
  audio_prompt: audio_prompt_lib.AudioPromptConditioner
  maf: maf_lib.MAFBlock
  trunk: mmdit_lib.MMDiT
  vae: codec_lib.Codec

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Token ids (B, Lt) + mask -> (B, Lt, D) text tokens, padded rows exactly 0."""
    tokens, _ = self.text(input_ids, attention_mask)
    return tokens

  def encode_frames(self, frames: jax.Array) -> jax.Array:
    """Video frames (B, F, H, W, 3) in [0, 255] -> CLIP tokens (B, F, Q, D)."""
    b, f = frames.shape[:2]
    images = clip_lib.preprocess_frames(frames.reshape((b * f,) + frames.shape[2:]))
    tokens = self.clip(images)
    return tokens.reshape((b, f) + tokens.shape[1:])

  def encode_video(self, frames: jax.Array, sync: jax.Array) -> jax.Array:
    """Frames (B, F, H, W, 3) in [0, 255] + sync features (B, S, Ds) -> (B, Lv, D).

    An all-zero video becomes the learned `empty_visual_feat` (CLIP still runs on it, as
    officially; callers that know a whole batch is empty can skip this call).
    """
    is_empty = video_lib.VideoConditioner.is_empty_video(frames)
    return self.video(self.encode_frames(frames), sync, is_empty)

  def encode_audio_prompt(self, audio: jax.Array, **kwargs) -> jax.Array:
    """Prompt waveform (B, N, C) -> (B, La, D); kwargs as `AudioPromptConditioner`."""
    return self.audio_prompt(audio, **kwargs)

  def encode_conditions(self, batch: dict[str, jax.Array], *, rng: jax.Array | None = None,
                        deterministic: bool = False) -> dict[str, jax.Array]:
    """The conditioners on a batch, before any MAF: {'text': (B, Lt, D), 'video': (B, Lv, D),
    'audio': (B, La, D)}. The audio prompt's VAE posterior is sampled with `rng` (and
    span-masked if `official_masking`) unless `deterministic`, as the official training does."""
    return dict(
        text=self.encode_text(batch['input_ids'], batch['attention_mask']),
        video=self.encode_video(batch['frames'].astype(jnp.float32), batch['sync']),
        audio=self.encode_audio_prompt(batch['prompt'], rng=rng, deterministic=deterministic))

  def fuse(self, text: jax.Array, video: jax.Array, audio: jax.Array,
           deterministic: bool = True) -> jax.Array:
    """Per-modality tokens -> post-fusion conditioning (B, Lt + Lv + La, D)."""
    return self.maf(text, video, audio, deterministic=deterministic)

  def velocity(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
    """Noisy latents (B, T, C), t (B,), conditioning (B, L, D) -> velocity (B, T, C)."""
    return self.trunk(x, t, cond)

  def readouts(self, x: jax.Array, t: jax.Array, cond: jax.Array, num_blocks: int
               ) -> jax.Array:
    """Read-outs after each of the first `num_blocks` blocks, one pass: (K, B, T, C)."""
    return self.trunk.readouts(x, t, cond, num_blocks)

  def encode_latents(self, audio: jax.Array, noise: jax.Array | None = None, *,
                     rng: jax.Array | None = None, deterministic: bool = False) -> jax.Array:
    """Waveform (B, N, 2) -> latents (B, T, C) (posterior sample, or its mean)."""
    return self.vae.encode(audio, noise, rng=rng, deterministic=deterministic)

  def decode_latents(self, latents: jax.Array) -> jax.Array:
    """Latents (B, T, C) -> waveform (B, T * hop, 2)."""
    return self.vae.decode(latents)

  def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
    """Runs every network once (for `init`): the whole conditional velocity path.

    batch: input_ids/attention_mask (B, Lt), frames (B, F, H, W, 3), sync (B, S, Ds),
    prompt (B, Np, 2), audio (B, N, 2), t (B,).
    """
    cond = self.fuse(self.encode_text(batch['input_ids'], batch['attention_mask']),
                     self.encode_video(batch['frames'], batch['sync']),
                     self.encode_audio_prompt(batch['prompt'], deterministic=True))
    x = self.encode_latents(batch['audio'], deterministic=True)
    self.decode_latents(x)
    return self.velocity(x, batch['t'], cond)


def _dtype(name: str):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[name]


def synchformer_misfit(m: mlc.ConfigDict, extractor: synchformer.Synchformer) -> str | None:
  """Why `extractor`'s sync features do not fit `m.video` (None when they do)."""
  seconds = m.video.num_frames / m.video_fps
  length = synchformer.sync_len(extractor, seconds)
  if (length, extractor.embed_dim) == (m.video.sync_len, m.video.sync_dim):
    return None
  return (f'model.synchformer makes ({length}, {extractor.embed_dim}) sync features for the '
          f'{seconds:g} s of model.video, but model.video.sync_len, sync_dim = '
          f'({m.video.sync_len}, {m.video.sync_dim})')


def check_model_config(m: mlc.ConfigDict) -> None:
  """Raises ValueError naming the config fields whose sizes do not fit together."""
  hop = codec_lib.hop_length(m)
  text_len = m.text.max_length
  problems = []

  def need(ok: bool, msg: str):
    if not ok:
      problems.append(msg)

  latent_len, latent_channels = codec_lib.latent_shape(m, m.audio_samples)
  need(m.trunk.seq_len == latent_len,
       f'model.trunk.seq_len={m.trunk.seq_len} but model.audio_samples={m.audio_samples} gives '
       f'{latent_len} latent frames (model.codec={codec_lib.codec_name(m)!r}, hop {hop})')
  prompt_len = (codec_lib.latent_shape(m, m.prompt_samples)[0] if _prompt_via_codec(m)
                else vae_lib.encoded_length(m.prompt_samples, m.vae.strides))
  need(m.audio_prompt.latent_seq_len == prompt_len,
       f'model.audio_prompt.latent_seq_len={m.audio_prompt.latent_seq_len} but '
       f'model.prompt_samples={m.prompt_samples} gives {prompt_len} latent frames')
  need(m.trunk.io_channels == latent_channels,
       f'model.trunk.io_channels={m.trunk.io_channels} but model.codec='
       f'{codec_lib.codec_name(m)!r} makes {latent_channels} latent channels')
  # The read-out maps embed_dim features to io_channels: a narrower trunk cannot output a
  # full-rank velocity, and the noise in the missing directions would never be removed.
  need(m.trunk.embed_dim >= m.trunk.io_channels,
       f'model.trunk.embed_dim={m.trunk.embed_dim} < model.trunk.io_channels='
       f'{m.trunk.io_channels}')
  need(m.disc.in_channels == m.trunk.io_channels,
       f'model.disc.in_channels={m.disc.in_channels} != model.trunk.io_channels='
       f'{m.trunk.io_channels} (the heads read the trunk read-outs)')
  for name, value in (('t5.d_model', m.t5.d_model), ('video.dim', m.video.dim),
                      ('clip.hidden_size', m.clip.hidden_size),
                      ('audio_prompt.output_dim', m.audio_prompt.output_dim),
                      ('maf.dim', m.maf.dim), ('trunk.cond_dim', m.trunk.cond_dim)):
    need(value == m.cond_dim, f'model.{name}={value} != model.cond_dim={m.cond_dim}')
  cond_len = text_len + m.video.out_tokens + m.audio_prompt.prompt_tokens
  need(m.trunk.cond_len == cond_len,
       f'model.trunk.cond_len={m.trunk.cond_len} != text.max_length + video.out_tokens + '
       f'audio_prompt.prompt_tokens = {cond_len}')
  tokens_per_frame = (m.clip.image_size // m.clip.patch_size) ** 2 + 1
  need(m.video.tokens_per_frame == tokens_per_frame,
       f'model.video.tokens_per_frame={m.video.tokens_per_frame} but CLIP gives '
       f'{tokens_per_frame} tokens per frame')
  if m.get('synchformer'):
    misfit = synchformer_misfit(m, synchformer.from_config(m.synchformer))
    need(misfit is None, misfit)
  if problems:
    raise ValueError('inconsistent model config:\n  ' + '\n  '.join(problems))


def _prompt_via_codec(m: mlc.ConfigDict) -> bool:
  """`model.audio_prompt.encoder`: 'vae' (own Oobleck encoder, official; the default) or
  'codec' (the target's parameter-free codec, so prompt and target share one latent)."""
  encoder = m.audio_prompt.get('encoder', 'vae')
  if encoder not in ('vae', 'codec'):
    raise ValueError(f"model.audio_prompt.encoder must be 'vae' or 'codec', got {encoder!r}")
  if encoder == 'codec' and codec_lib.codec_name(m) == 'oobleck':
    raise ValueError("model.audio_prompt.encoder='codec' needs a parameter-free model.codec "
                     "('patch' or 'mel'); the Oobleck prompt encoder is the 'vae' option")
  return encoder == 'codec'


def build_model(m: mlc.ConfigDict, *, dtype: str | None = None, check: bool = True,
                inference: bool = False) -> AudioX:
  """The AudioX module for a `config.model` section (see configs/official.py).

  `inference=True` picks the inference layout whatever the training config says: the trunk
  without the layer scan, to be run on `inference_params(params)` (generation, serving and
  evaluation use it; training keeps the config's scan).

  `check=False` skips the cross-network size checks: the converter maps each network on its
  own and may be given a section-by-section config whose networks do not fit together.
  """
  if check:
    check_model_config(m)
  dt = _dtype(dtype or m.dtype)
  attn = m.attention_impl or None
  return AudioX(
      text=t5_lib.T5Conditioner(**m.t5, dtype=dt),
      clip=clip_lib.CLIPVisionTower(**m.clip, attention_impl=attn, dtype=dt),
      video=video_lib.VideoConditioner(**m.video, attention_impl=attn, dtype=dt),
      audio_prompt=audio_prompt_lib.AudioPromptConditioner(
          **m.vae, **{k: v for k, v in m.audio_prompt.items() if k != 'encoder'},
          codec=codec_lib.build_codec(m) if _prompt_via_codec(m) else None, dtype=jnp.float32),
      maf=maf_lib.MAFBlock(**{**m.maf, 'modality_order': tuple(m.maf.modality_order)},
                           attention_impl=attn, dtype=dt),
      trunk=mmdit_lib.MMDiT(**{**m.trunk,
                               'scan_layers': m.trunk.get('scan_layers', True) and not inference},
                            winograd=inference and mmdit_lib.inference_winograd(
                                m.trunk.get('kernel_size', 3)),
                            attention_impl=attn, dtype=dt),
      vae=codec_lib.build_codec(m, dtype=jnp.float32))


def inference_params(params: dict) -> dict:
  """A parameter tree (any layout) for `build_model(..., inference=True)`: the trunk's
  scanned blocks as one subtree per block and, on CPU, their convolution kernels as Winograd
  filters (`mmdit.inference_layout`); everything else as is."""
  if 'trunk' not in params:
    return params
  return {**params, 'trunk': mmdit_lib.inference_layout(params['trunk'])}


def dummy_batch(m: mlc.ConfigDict, batch_size: int = 1) -> dict[str, Any]:
  """Zero inputs of the right shapes for `init` / `eval_shape` (jax.ShapeDtypeStruct-free)."""
  b, size = batch_size, m.clip.image_size
  return {
      'input_ids': jnp.zeros((b, m.text.max_length), jnp.int32),
      'attention_mask': jnp.ones((b, m.text.max_length), jnp.int32),
      'frames': jnp.zeros((b, m.video.num_frames, size, size, 3), jnp.float32),
      'sync': jnp.zeros((b, m.video.sync_len, m.video.sync_dim), jnp.float32),
      'prompt': jnp.zeros((b, m.prompt_samples, 2), jnp.float32),
      'audio': jnp.zeros((b, m.audio_samples, 2), jnp.float32),
      't': jnp.full((b,), 0.5, jnp.float32),
  }


def init_params(model: AudioX, m: mlc.ConfigDict, rng: jax.Array) -> Any:
  """Boxed (logically named) parameter tree; wrap in jax.eval_shape to avoid materializing."""
  return model.init({'params': rng, 'dropout': rng, 'sample': rng}, dummy_batch(m))['params']

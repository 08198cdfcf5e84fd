"""Official AudioX-Turbo checkpoint (+ VAE, T5 and CLIP files) -> one axturbo parameter tree.

Strict: every tensor of the official file is either mapped or on a documented list of unused
tensors (UNUSED below, plus the trunk's DEAD_TENSORS); anything else missing, extra or
mis-shaped raises ConversionError naming the key.
"""
import fnmatch
from typing import Callable, Mapping

import jax
import ml_collections as mlc
import numpy as np

from axturbo.convert import hf, maf, mmdit, vae, video_cond
from axturbo.convert import disc_head as disc_head_convert
from axturbo.convert.common import ConversionError, StateDict, reject_leftovers
from axturbo.models import audiox
from axturbo.models.disc_head import DiscriminatorHeads

VIDEO = 'conditioner.conditioners.video_prompt.'
AUDIO = 'conditioner.conditioners.audio_prompt.'
CLIP = VIDEO + 'visual_encoder_model.vision_model.'
# The official T5 conditioner keeps T5 out of the state dict (it hides it in __dict__), unless
# it was built with `enable_grad: true`; then the tower is saved here, in HF T5 names.
TEXT = 'conditioner.conditioners.text_prompt.model.'

# Canonical names the official model stores but never uses on its forward path.
UNUSED = (
    (CLIP + 'post_layernorm.*', 'the conditioner takes CLIP last_hidden_state, before post-LN'),
    (VIDEO + 'visual_encoder_model.visual_projection.*', 'the CLIP projection head is unused'),
    (AUDIO + 'pretransform.model.decoder.*', "the audio prompt's VAE copy only encodes"),
) + tuple(('model.model.' + pattern, why) for pattern, why in mmdit.DEAD_TENSORS)


def _skip_unused(sd: StateDict) -> None:
  for key in list(sd.arrays):
    if any(fnmatch.fnmatchcase(key, pattern) for pattern, _ in UNUSED):
      sd.skip(key)


def convert(arrays: Mapping[str, np.ndarray], m: mlc.ConfigDict, *, source: str,
            vae_arrays: Mapping[str, np.ndarray] | None = None, vae_source: str = 'vae',
            t5_dir: str | None = None, clip_dir: str | None = None,
            log: Callable[[str], None] = print) -> dict:
  """Maps canonical official tensors to {'text', 'clip', 'video', 'audio_prompt', 'maf',
  'trunk', 'vae'[, 'disc']} for the networks described by `m` (a `config.model` section).

  Args:
    arrays: canonical official names -> arrays (see torch_io.canonicalize).
    m: model config; each network is mapped with the sizes of its own section.
    vae_arrays: `vae.ckpt` tensors (keys 'encoder.*'/'decoder.*'); as officially, these
      replace the checkpoint's own `pretransform.model.*` when given.
    t5_dir: local Hugging Face T5 folder, read only when the checkpoint holds no T5 copy
      (TEXT*; released checkpoints hold none). Whatever `m.text.tokenizer`, the text tower
      (`m.t5`) needs weights from one of the two.
    clip_dir: local Hugging Face CLIP folder, used only when the checkpoint has no CLIP copy.
  """
  mmdit.check_sizes(m.trunk)  # before anything is mapped: a wrong split is a config error
  model = audiox.build_model(m, check=False)
  sd = StateDict(arrays, source)
  text_in_checkpoint = any(k.startswith(TEXT) for k in sd.arrays)
  if not (text_in_checkpoint or t5_dir):  # known before the long mapping: say so now
    raise ConversionError(f'{source}: holds no T5 text tower ({TEXT}*) and no T5 folder was '
                          'given: pass --t5 (a local folder with the weights model.t5 sizes)')
  params = {}

  def mapped(name: str, tree: dict, origin: str = '') -> None:
    params[name] = tree
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
    log(f'  {name:13s} {count:>15,d} parameters' + (f'  (from {origin})' if origin else ''))

  mapped('trunk', mmdit.mmdit_params(sd.scope('model.model.'), model.trunk))
  mapped('maf', maf.maf_params(sd.scope('maf_block.'), model.maf))
  mapped('video', video_cond.video_conditioner_params(sd.scope(VIDEO), model.video))
  mapped('audio_prompt', vae.audio_prompt_params(sd.scope(AUDIO), model.audio_prompt))
  if sd.has(CLIP + 'embeddings.class_embedding'):
    mapped('clip', hf.clip_vision_params(sd.scope(CLIP), model.clip))
  elif clip_dir:
    _, clip_params = hf.load_clip_vision_from_dir(clip_dir)
    mapped('clip', clip_params)
  else:
    raise ConversionError(f'{source}: holds no CLIP tower ({CLIP}*); pass a local CLIP folder')
  if vae_arrays is not None:
    vae_sd = StateDict(vae_arrays, vae_source)
    mapped('vae', vae.vae_params(vae_sd, model.vae))
    reject_leftovers(vae_sd)
    for key in sd.arrays:  # superseded by the separate VAE file, as in the official loader
      if key.startswith('pretransform.model.'):
        sd.skip(key)
  elif sd.has('pretransform.model.encoder.layers.0.bias'):
    mapped('vae', vae.vae_params(sd.scope('pretransform.model.'), model.vae))
  else:
    raise ConversionError(f'{source}: holds no VAE (pretransform.model.*); pass the vae.ckpt')
  if any(k.startswith('discriminator_heads.') for k in sd.arrays):
    heads = DiscriminatorHeads(**m.disc)
    mapped('disc', disc_head_convert.disc_heads_params(sd, heads.num_heads, heads.in_channels,
                                                       heads.hidden))
  if text_in_checkpoint:
    mapped('text', hf.t5_encoder_params(sd.scope(TEXT), model.text), f'{source}: {TEXT}*')
  else:
    text = StateDict(hf.load_hf_weights(t5_dir), str(t5_dir))
    mapped('text', hf.t5_encoder_params(text, model.text), str(t5_dir))
    reject_leftovers(text, ('decoder.', 'lm_head.'))
  _skip_unused(sd)
  reject_leftovers(sd)
  return params

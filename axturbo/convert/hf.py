"""Hugging Face T5 encoder and CLIP vision weights from a local model folder into Flax trees.

A model folder is what `save_pretrained` writes: `config.json` plus `model.safetensors`
(optionally sharded, with `model.safetensors.index.json`) or `pytorch_model.bin`. Nothing is
downloaded. The mapping functions take every tensor they need with its expected shape, so a
mismatched checkpoint fails naming the key; the `load_*_from_dir` helpers also reject tensors
that belong to neither the tower nor a known unused part (decoder, text tower, heads).
"""
import json
import pathlib
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from axturbo.convert import torch_io
from axturbo.convert.common import (ConversionError, StateDict, layer_norm, linear,
                                    reject_leftovers, stack_layers)
from axturbo.models.clip import CLIPVisionTower
from axturbo.models.t5 import T5Encoder, parse_feed_forward_proj

# HF config defaults (T5Config, CLIPVisionConfig) for keys a config.json may omit.
_T5_DEFAULTS = {'vocab_size': 32128, 'd_model': 512, 'd_kv': 64, 'd_ff': 2048, 'num_layers': 6,
                'num_heads': 8, 'relative_attention_num_buckets': 32,
                'relative_attention_max_distance': 128, 'layer_norm_epsilon': 1e-6,
                'feed_forward_proj': 'relu'}
_CLIP_DEFAULTS = {'hidden_size': 768, 'intermediate_size': 3072, 'num_hidden_layers': 12,
                  'num_attention_heads': 12, 'image_size': 224, 'patch_size': 32,
                  'num_channels': 3, 'hidden_act': 'quick_gelu', 'layer_norm_eps': 1e-5}
def _folder(local_dir) -> pathlib.Path:
  path = pathlib.Path(local_dir)
  if not path.is_dir():
    raise FileNotFoundError(f'model folder {str(path)!r} does not exist (nothing is downloaded; '
                            'save the model there with save_pretrained first)')
  return path


def load_hf_weights(local_dir) -> dict[str, np.ndarray]:
  """All tensors of a local HF model folder, torch key -> np.ndarray (bf16 becomes float32).

  Reads `model.safetensors`, else the shards listed in `model.safetensors.index.json`, else
  `pytorch_model.bin` (needs torch).
  """
  folder = _folder(local_dir)
  if (folder / 'model.safetensors').is_file():
    return torch_io.load_state_dict(folder / 'model.safetensors')
  index = folder / 'model.safetensors.index.json'
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())['weight_map'].values()))
    out = {}
    for shard in shards:
      out.update(torch_io.load_state_dict(folder / shard))
    return out
  if (folder / 'pytorch_model.bin').is_file():
    return torch_io.load_state_dict(folder / 'pytorch_model.bin')
  raise FileNotFoundError(f'{str(folder)!r} has no model.safetensors, '
                          'model.safetensors.index.json or pytorch_model.bin')


def read_hf_config(local_dir) -> dict:
  """`config.json` of a local HF folder; for a full CLIP model config, its `vision_config`."""
  path = _folder(local_dir) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{str(path)!r} does not exist')
  cfg = json.loads(path.read_text())
  if 'vision_config' in cfg or 'vision_config_dict' in cfg:
    vision = dict(cfg.get('vision_config') or {})
    vision.update(cfg.get('vision_config_dict') or {})  # old files: this one wins, as in HF
    return vision
  return cfg


def t5_fields(cfg: Mapping) -> dict:
  """HF T5 config dict -> `T5Encoder` keyword arguments (missing keys take HF defaults)."""
  c = {**_T5_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
  return {'vocab_size': c['vocab_size'], 'd_model': c['d_model'], 'd_kv': c['d_kv'],
          'd_ff': c['d_ff'], 'num_layers': c['num_layers'], 'num_heads': c['num_heads'],
          'relative_attention_num_buckets': c['relative_attention_num_buckets'],
          'relative_attention_max_distance': c['relative_attention_max_distance'],
          'eps': c['layer_norm_epsilon'], 'feed_forward_proj': c['feed_forward_proj']}


def clip_vision_fields(cfg: Mapping) -> dict:
  """HF CLIPVisionConfig dict -> `CLIPVisionTower` keyword arguments."""
  c = {**_CLIP_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
  return {'hidden_size': c['hidden_size'], 'intermediate_size': c['intermediate_size'],
          'num_layers': c['num_hidden_layers'], 'num_heads': c['num_attention_heads'],
          'image_size': c['image_size'], 'patch_size': c['patch_size'],
          'num_channels': c['num_channels'], 'hidden_act': c['hidden_act'],
          'eps': c['layer_norm_eps']}


def _as_module(cfg, cls, fields_fn):
  return cfg if isinstance(cfg, cls) else cls(**fields_fn(cfg))


def _t5_block(sd: StateDict, m: T5Encoder, gated: bool) -> dict:
  d, inner = m.d_model, m.num_heads * m.d_kv
  att = sd.scope('layer.0.')
  ff = sd.scope('layer.1.')
  if gated:
    ff_params = {'wi_0': linear(ff, 'DenseReluDense.wi_0', d, m.d_ff, bias=False),
                 'wi_1': linear(ff, 'DenseReluDense.wi_1', d, m.d_ff, bias=False)}
  else:
    ff_params = {'wi': linear(ff, 'DenseReluDense.wi', d, m.d_ff, bias=False)}
  ff_params['wo'] = linear(ff, 'DenseReluDense.wo', m.d_ff, d, bias=False)
  return {
      'attention_norm': {'scale': att.take('layer_norm.weight', (d,))},
      'attention': {'q': linear(att, 'SelfAttention.q', d, inner, bias=False),
                    'k': linear(att, 'SelfAttention.k', d, inner, bias=False),
                    'v': linear(att, 'SelfAttention.v', d, inner, bias=False),
                    'o': linear(att, 'SelfAttention.o', inner, d, bias=False)},
      'ff_norm': {'scale': ff.take('layer_norm.weight', (d,))},
      'ff': ff_params,
  }


def t5_encoder_params(sd: StateDict, cfg) -> dict:
  """HF T5 (encoder) tensors -> `T5Encoder` params.

  Args:
    sd: a view at the model root (`shared.weight`, `encoder.block.*`, as in T5EncoderModel or
      T5ForConditionalGeneration files) or at the encoder (`embed_tokens.weight`, `block.*`).
      The embedding is read from the first of `shared.weight`, `encoder.embed_tokens.weight`,
      `embed_tokens.weight` present; the others (tied copies) are marked as used.
    cfg: a `T5Encoder`, or an HF T5 config dict.
  """
  m = _as_module(cfg, T5Encoder, t5_fields)
  _, gated = parse_feed_forward_proj(m.feed_forward_proj)
  embed_keys = [k for k in ('shared.weight', 'encoder.embed_tokens.weight', 'embed_tokens.weight')
                if sd.has(k)]
  if not embed_keys:
    raise ConversionError(f'{sd.source}: no token embedding (shared.weight or '
                          f'[encoder.]embed_tokens.weight) under prefix {sd.prefix!r}')
  embedding = sd.take(embed_keys[0], (m.vocab_size, m.d_model))
  for alias in embed_keys[1:]:
    sd.skip(alias)
  enc = sd.scope('encoder.') if sd.has('encoder.final_layer_norm.weight') else sd
  blocks = [_t5_block(enc.scope(f'block.{i}.'), m, gated) for i in range(m.num_layers)]
  params = {
      'shared': {'embedding': embedding},
      'relative_attention_bias': enc.take(
          'block.0.layer.0.SelfAttention.relative_attention_bias.weight',
          (m.relative_attention_num_buckets, m.num_heads)),
      'final_norm': {'scale': enc.take('final_layer_norm.weight', (m.d_model,))},
  }
  if m.scan_layers:
    params['layers'] = stack_layers(blocks)
  else:
    params.update({f'layers_{i}': b for i, b in enumerate(blocks)})
  return params


def _clip_layer(sd: StateDict, m: CLIPVisionTower) -> dict:
  d, f = m.hidden_size, m.intermediate_size
  out = {f'{n}_proj': linear(sd, f'self_attn.{n}_proj', d, d) for n in ('q', 'k', 'v', 'out')}
  out['layer_norm1'] = layer_norm(sd, 'layer_norm1', d)
  out['layer_norm2'] = layer_norm(sd, 'layer_norm2', d)
  out['fc1'] = linear(sd, 'mlp.fc1', d, f)
  out['fc2'] = linear(sd, 'mlp.fc2', f, d)
  return out


def clip_vision_params(sd: StateDict, cfg) -> dict:
  """HF CLIP vision tensors -> `CLIPVisionTower` params.

  Args:
    sd: a view scoped at the `vision_model.` level (keys `embeddings.*`, `pre_layrnorm.*`,
      `encoder.layers.*`). In the official AudioX state dict that prefix is
      `conditioner.conditioners.video_prompt.visual_encoder_model.vision_model.`; in HF CLIP files
      it is `vision_model.`. `post_layernorm.*` (and `visual_projection`, outside this scope) are
      not read: the caller skips them. The `embeddings.position_ids` buffer that older files
      store is marked as used.
    cfg: a `CLIPVisionTower`, or an HF CLIPVisionConfig dict.
  """
  m = _as_module(cfg, CLIPVisionTower, clip_vision_fields)
  d, p, c = m.hidden_size, m.patch_size, m.num_channels
  patch = sd.take('embeddings.patch_embedding.weight', (d, c, p, p))
  sd.skip('embeddings.position_ids')
  layers = [_clip_layer(sd.scope(f'encoder.layers.{i}.'), m) for i in range(m.num_layers)]
  params = {
      'patch_embedding': {'kernel': np.transpose(patch, (2, 3, 1, 0))},
      'class_embedding': sd.take('embeddings.class_embedding', (d,)),
      'position_embedding': sd.take('embeddings.position_embedding.weight', (m.num_positions, d)),
      'pre_layrnorm': layer_norm(sd, 'pre_layrnorm', d),
  }
  if m.scan_layers:
    params['layers'] = stack_layers(layers)
  else:
    params.update({f'layers_{i}': layer for i, layer in enumerate(layers)})
  return params


def load_t5_from_dir(local_dir, *, dtype=jnp.float32, scan_layers: bool = False
                     ) -> tuple[T5Encoder, dict]:
  """(T5Encoder, params) from a local HF T5 folder (encoder-only or full seq2seq model).

  The same params also drive `T5Conditioner(**t5_fields(read_hf_config(local_dir)))`.
  """
  module = T5Encoder(**t5_fields(read_hf_config(local_dir)), scan_layers=scan_layers,
                     dtype=dtype)
  sd = StateDict(load_hf_weights(local_dir), source=str(local_dir))
  params = t5_encoder_params(sd, module)
  reject_leftovers(sd, ('decoder.', 'lm_head.'))
  return module, params


def load_clip_vision_from_dir(local_dir, *, dtype=jnp.float32, scan_layers: bool = False
                              ) -> tuple[CLIPVisionTower, dict]:
  """(CLIPVisionTower, params) from a local HF CLIP or CLIPVision folder.

  Unused here: `post_layernorm`, `visual_projection`, the text tower and `logit_scale`.
  """
  module = CLIPVisionTower(**clip_vision_fields(read_hf_config(local_dir)),
                           scan_layers=scan_layers, dtype=dtype)
  root = StateDict(load_hf_weights(local_dir), source=str(local_dir))
  prefix = 'vision_model.' if root.has('vision_model.embeddings.class_embedding') else ''
  vision = root.scope(prefix)
  params = clip_vision_params(vision, module)
  vision.skip('post_layernorm.weight')
  vision.skip('post_layernorm.bias')
  reject_leftovers(root, ('visual_projection.', 'text_model.', 'text_projection.',
                           'logit_scale'))
  return module, params

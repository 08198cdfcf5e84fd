"""`synchformer_state_dict.pth` -> `axturbo.models.synchformer.Synchformer` params, strictly.

The file holds the whole Synchformer sync model. As the official loader does, only the visual
extractor (keys starting with `vfeat_extractor`) is read; every tensor there must be mapped or
be on UNUSED, and anything missing or mis-shaped raises ConversionError naming the key. The
other branches (audio extractor, projections, the sync transformer) are outside this
extractor and are left unread, as officially.
"""
import fnmatch
from typing import Callable, Mapping

import jax
import numpy as np

from axturbo.convert.common import (ConversionError, StateDict, layer_norm, linear,
                                    reject_leftovers, stack_layers)
from axturbo.models.synchformer import Synchformer

PREFIX = 'vfeat_extractor.'
UNUSED = (
    (PREFIX + 'patch_embed.proj.*',
     'the 2-D patch embedding: MotionFormer builds it only to count patches and embeds '
     'tubelets with patch_embed_3d'),
)


def _split_qkv(sd: StateDict, key: str, width: int, bias_key: str | None = None) -> dict:
  """A fused torch (3D, D) projection (rows q, k, v) -> {'q_proj', 'k_proj', 'v_proj'} Dense."""
  w = sd.take(f'{key}.weight' if bias_key is None else key, (3 * width, width))
  b = sd.take(f'{key}.bias' if bias_key is None else bias_key, (3 * width,))
  return {f'{n}_proj': {'kernel': w[i * width:(i + 1) * width].T,
                        'bias': b[i * width:(i + 1) * width]}
          for i, n in enumerate('qkv')}


def _attention(sd: StateDict, key: str, width: int) -> dict:
  out = _split_qkv(sd, f'{key}.qkv', width)
  out['out_proj'] = linear(sd, f'{key}.proj', width, width)
  return out


def _block(sd: StateDict, width: int, mlp: int) -> dict:
  return {
      'norm1': layer_norm(sd, 'norm1', width),
      'norm2': layer_norm(sd, 'norm2', width),
      'norm3': layer_norm(sd, 'norm3', width),
      'time_attn': _attention(sd, 'timeattn', width),
      'space_attn': _attention(sd, 'attn', width),
      'fc1': linear(sd, 'mlp.fc1', width, mlp),
      'fc2': linear(sd, 'mlp.fc2', mlp, width),
  }


def _spatial_agg(sd: StateDict, width: int, mlp: int) -> dict:
  out = _split_qkv(sd, 'self_attn.in_proj_weight', width, 'self_attn.in_proj_bias')
  out.update({
      'cls_token': sd.take('cls_token', (1, 1, width))[0, 0],
      'out_proj': linear(sd, 'self_attn.out_proj', width, width),
      'norm1': layer_norm(sd, 'norm1', width),
      'norm2': layer_norm(sd, 'norm2', width),
      'fc1': linear(sd, 'linear1', width, mlp),
      'fc2': linear(sd, 'linear2', mlp, width),
  })
  return out


def synchformer_params(sd: StateDict, model: Synchformer) -> dict:
  """Tensors under a view scoped at `vfeat_extractor.` -> `model`'s params (float32 NumPy)."""
  d, p, kt = model.embed_dim, model.patch_size, model.tubelet_size
  mlp = model.mlp_ratio * d
  conv = sd.take('patch_embed_3d.proj.weight', (d, 3, kt, p, p))
  params = {
      # torch Conv3d (out, in, t, h, w) -> Flax (t, h, w, in, out).
      'patch_embed': {'kernel': np.transpose(conv, (2, 3, 4, 1, 0)),
                      'bias': sd.take('patch_embed_3d.proj.bias', (d,))},
      'cls_token': sd.take('cls_token', (1, 1, d))[0, 0],
      'pos_embed': sd.take('pos_embed', (1, 1 + model.grid ** 2, d))[0],
      'temp_embed': sd.take('temp_embed', (1, model.tubelets, d))[0],
      'norm': layer_norm(sd, 'norm', d),
      'spatial_agg': _spatial_agg(sd.scope('spatial_attn_agg.'), d, mlp),
  }
  blocks = [_block(sd.scope(f'blocks.{i}.'), d, mlp) for i in range(model.depth)]
  if model.scan_layers:
    params['blocks'] = stack_layers(blocks)
  else:
    params.update({f'blocks_{i}': b for i, b in enumerate(blocks)})
  return params


def convert(arrays: Mapping[str, np.ndarray], model: Synchformer, *, source: str,
            log: Callable[[str], None] = print) -> dict:
  """All tensors of a Synchformer state dict -> the visual extractor's params, strictly."""
  if not any(k.startswith(PREFIX) for k in arrays):
    raise ConversionError(f'{source}: holds no Synchformer visual extractor ({PREFIX}*); '
                          'expected synchformer_state_dict.pth')
  sd = StateDict(arrays, source)
  params = synchformer_params(sd.scope(PREFIX), model)
  for key in arrays:
    if any(fnmatch.fnmatchcase(key, pattern) for pattern, _ in UNUSED):
      sd.skip(key)
  # The official filter is a bare startswith('vfeat_extractor'): keep its exact scope.
  reject_leftovers(sd.scope(PREFIX.rstrip('.')))
  count = sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(params))
  log(f'  {"synchformer":13s} {count:>15,d} parameters')
  return params


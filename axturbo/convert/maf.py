"""Official `maf_block.*` tensors -> `MAFBlock` parameters."""
import numpy as np

from axturbo.convert.common import StateDict, layer_norm, linear, stack_layers
from axturbo.models.maf import SLOTS, MAFBlock


def multihead_attention(sd: StateDict, key: str, dim: int) -> dict:
  """torch MultiheadAttention at `key` -> {'query','key','value','out'} Dense trees.

  `in_proj_weight` (3D, D) holds the row blocks [Wq; Wk; Wv].
  """
  w = sd.take(f'{key}.in_proj_weight', (3 * dim, dim))
  b = sd.take(f'{key}.in_proj_bias', (3 * dim,))
  out = {}
  for i, name in enumerate(('query', 'key', 'value')):
    rows = slice(i * dim, (i + 1) * dim)
    out[name] = {'kernel': np.ascontiguousarray(w[rows].T), 'bias': b[rows]}
  out['out'] = linear(sd, f'{key}.out_proj', dim, dim)
  return out


def _fusion_layer(sd: StateDict, dim: int, mlp_dim: int) -> dict:
  return {
      'self_attn': multihead_attention(sd, 'self_attn', dim),
      'linear1': linear(sd, 'linear1', dim, mlp_dim),
      'linear2': linear(sd, 'linear2', mlp_dim, dim),
      'norm1': layer_norm(sd, 'norm1', dim),
      'norm2': layer_norm(sd, 'norm2', dim),
  }


def maf_params(sd: StateDict, cfg: MAFBlock) -> dict:
  """Maps the tensors of `sd` (scoped at 'maf_block.') to `cfg`'s parameter tree.

  The torch slot letters are kept (norm_v2, bypass_gate_v, ...); which modality a slot carries is
  `cfg.modality_order`, not a property of the weights.
  """
  d, n_exp = cfg.dim, cfg.num_experts_per_modality
  mlp_dim = int(d * cfg.mlp_ratio)
  params = {
      'unified_experts': sd.take('unified_experts', (3 * n_exp, d)),
      'gating_network_0': linear(sd, 'gating_network.0', 3 * d, d),
      'gating_network_2': linear(sd, 'gating_network.2', d, 3),
      'cross_attn': multihead_attention(sd, 'cross_attn', d),
      'norm1': layer_norm(sd, 'norm1', d),
      'fusion_layers': stack_layers([
          _fusion_layer(sd.scope(f'fusion_transformer.layers.{i}.'), d, mlp_dim)
          for i in range(cfg.num_layers)]),
  }
  for slot in SLOTS:
    params[f'norm_{slot}2'] = layer_norm(sd, f'norm_{slot}2', d)
    params[f'bypass_gate_{slot}'] = sd.take(f'bypass_gate_{slot}', ())
  return params

"""Official MMDiT trunk (`model.model.*`) -> `axturbo.models.mmdit.MMDiT` parameters."""
import fnmatch

import numpy as np

from axturbo.convert.common import ConversionError, StateDict, conv1d, linear, stack_layers

# Tensors the official model stores but never uses on its forward path, relative to
# 'model.model.'. Each is skipped on purpose; everything else must be consumed.
DEAD_TENSORS = (
    # `project_cond_tokens: false` builds a 768->768 MLP whose call is commented out in the
    # official `_forward`; the conditioning goes straight to the trunk.
    ('to_cond_embed.*', 'built but never called'),
    # `global_cond_dim: 768` builds it, but the config has no global conditioning ids, so the
    # global embedding is always None and the MLP never runs.
    ('to_global_embed.*', 'no global conditioning is ever passed'),
    # The time "cross-attention" has a single key, so softmax is exactly 1 and its output is
    # the value row whatever the query is. (The other dead half, the j = 1 rows of `to_kv`
    # used as the key, lives inside the same tensor and is dropped by `_time_value`.)
    ('transformer.layers.*.cross_attn.to_q.weight', 'query of a one-key attention'),
)


def _heads_kernel(w: np.ndarray, num_heads: int, head_dim: int) -> np.ndarray:
  """torch (N*H, D) rows (h d) -> HeadsDense kernel (D, N, H)."""
  return np.transpose(w.reshape(num_heads, head_dim, -1), (2, 0, 1))


def _qkv(sd: StateDict, key: str, d: int, n: int, hd: int) -> dict:
  """Un-interleaves the 'b n (h d j)' fused projection (row = h*3*H + d*3 + j)."""
  w = sd.take(f'{key}.weight', (3 * d, d)).reshape(n, hd, 3, d)
  b = sd.take(f'{key}.bias', (3 * d,)).reshape(n, hd, 3)
  return {name: {'kernel': np.transpose(w[:, :, j, :], (2, 0, 1)), 'bias': b[:, :, j]}
          for j, name in enumerate(('q', 'k', 'v'))}


def _time_value(sd: StateDict, key: str, d: int, n: int, hd: int) -> dict:
  """Live half (j = 0, used as the value) of the interleaved kv rows h*2*H + d*2 + j."""
  w = sd.take(f'{key}.weight', (2 * d, d)).reshape(n, hd, 2, d)
  return {'kernel': np.transpose(w[:, :, 0, :], (2, 0, 1))}


def _block(sd: StateDict, cfg) -> dict:
  d, n, hd, m, k = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_hidden, cfg.kernel_size
  out = {'adaLN': linear(sd, 'adaLN_modulation.1', d, 6 * d)}
  out.update(_qkv(sd, 'attn.qkv', d, n, hd))
  out['attn_out'] = conv1d(sd, 'linear1', d, d, k)
  out['time_value'] = _time_value(sd, 'cross_attn.to_kv', d, n, hd)
  out['ffn_w1'] = conv1d(sd, 'ffn.w1', d, m, k, bias=False)
  out['ffn_w3'] = conv1d(sd, 'ffn.w3', d, m, k, bias=False)
  out['ffn_w2'] = conv1d(sd, 'ffn.w2', m, d, k, bias=False)
  return out


def skip_dead(sd: StateDict) -> None:
  """Marks every tensor under `sd`'s prefix that matches DEAD_TENSORS as deliberately unused."""
  for full in list(sd.arrays):
    if full.startswith(sd.prefix):
      rel = full[len(sd.prefix):]
      if any(fnmatch.fnmatchcase(rel, pat) for pat, _ in DEAD_TENSORS):
        sd.skip(rel)


def mmdit_params(sd: StateDict, cfg) -> dict:
  """Maps official tensors to the parameter tree of `cfg` (an `MMDiT` instance).

  Args:
    sd: view scoped at 'model.model.' (the keys then read 'timestep_features.weight', ...).
    cfg: the MMDiT module whose sizes give every expected shape and whose `scan_layers`
      chooses the layout ('layers/block' stacked on axis 0, or 'layers/block_{i}').
  Returns:
    Nested dict of float32 NumPy arrays equal in structure and shapes to the module's params.
  Raises:
    ConversionError: a tensor is missing or mis-shaped, or a tensor under the prefix is
      neither consumed nor documented dead (e.g. a deeper checkpoint than `cfg.depth`).
  """
  d, io = cfg.embed_dim, cfg.io_channels
  tr = sd.scope('transformer.')
  params = {
      'time_freqs': sd.take('timestep_features.weight', (cfg.fourier_dim // 2, 1))[:, 0],
      'time_embed_0': linear(sd, 'to_timestep_embed.0', cfg.fourier_dim, d),
      'time_embed_1': linear(sd, 'to_timestep_embed.2', d, d),
      'preprocess_conv': conv1d(sd, 'preprocess_conv', io, io, 1, bias=False),
      'postprocess_conv': conv1d(sd, 'postprocess_conv', io, io, 1, bias=False),
      'project_in': linear(tr, 'project_in', io, d, bias=False),
      'project_out': linear(tr, 'project_out', d, io, bias=False),
      'cond_proj': linear(tr, 'proj_mm_tokens', cfg.cond_dim, d),
      # Acts on the sequence axis: torch (L, cond_len) is a Dense over swapped axes.
      'cond_resample': linear(tr, 'proj_mm_seq_len', cfg.cond_len, cfg.seq_len + 1),
  }
  blocks = [_block(tr.scope(f'layers.{i}.'), cfg) for i in range(cfg.depth)]
  if cfg.scan_layers:
    params['layers'] = {'block': stack_layers(blocks)}
  else:
    params['layers'] = {f'block_{i}': b for i, b in enumerate(blocks)}
  skip_dead(sd)
  left = sd.untaken()
  if left:
    raise ConversionError(f'{sd.source}: {len(left)} tensors under {sd.prefix!r} were not '
                          f'consumed and are not documented dead, e.g. {left[:5]}')
  return params

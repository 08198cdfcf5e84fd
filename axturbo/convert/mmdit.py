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


def official_trunk_sizes(embed_dim: int, num_heads: int, mlp_ratio: float = 4.0,
                         multiple_of: int = 256) -> dict:
  """Attention and FFN sizes the official code builds from its config, as MMDiT fields.

  Heads: the config's `num_heads` C is used as a head *width*: the official wrapper passes
  `dim_heads = D // C` on, which the transformer then uses as the head *count*, and each head
  is `D // (D // C)` wide. So 1536 / "24 heads" is 64 heads of 24, and 120 / "12 heads" is 10
  heads of 12. The transposed split (C heads of D // C) has the same tensor shapes and converts
  without error, but attends over the wrong feature groups.
  FFN: hidden = int(2 * int(D * mlp_ratio) / 3), rounded up to a multiple of `multiple_of` (256
  in the official blocks; a test fixture uses 16): 1536 -> 4096, 120 -> 512.

  Args:
    embed_dim, num_heads, mlp_ratio: the official `model.diffusion.config` values.
    multiple_of: the FFN rounding (not configurable in the official code).
  Returns:
    {'num_heads', 'head_dim', 'mlp_hidden'}.
  Raises:
    ConversionError: sizes the official code cannot build (its head reshape would fail).
  """
  heads = embed_dim // num_heads if num_heads > 0 else 0
  if heads < 1 or embed_dim % heads:
    raise ConversionError(f'embed_dim {embed_dim} with num_heads {num_heads}: the official '
                          f'code splits it into {heads} heads, which does not divide the width')
  hidden = int(2 * int(embed_dim * mlp_ratio) / 3)
  hidden = multiple_of * -(-hidden // multiple_of)  # ceiling division, as the official rounding
  return {'num_heads': heads, 'head_dim': embed_dim // heads, 'mlp_hidden': hidden}


def check_sizes(cfg, where: str = 'model.trunk') -> None:
  """Raises ConversionError (one line, naming the config fields) when `cfg`'s heads do not
  tile its width: caught here rather than as a reshape error deep inside the mapping."""
  d, n, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim
  if n * hd != d:
    raise ConversionError(
        f'{where}.num_heads * {where}.head_dim = {n} * {hd} = {n * hd} != {where}.embed_dim '
        f'= {d}; an official num_heads C means {d} // C heads (derive them with '
        '--official_config model_config.json)')
  if hd % 2:
    raise ConversionError(f'{where}.head_dim = {hd} is odd; RoPE rotates feature pairs')


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
    ConversionError: `cfg`'s heads do not tile its width (check_sizes), a tensor is missing
      or mis-shaped, or a tensor under the prefix is
      neither consumed nor documented dead (e.g. a deeper checkpoint than `cfg.depth`).
  """
  check_sizes(cfg)
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

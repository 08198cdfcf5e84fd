"""Official video-conditioner tensors (everything but CLIP) -> `VideoConditioner` parameters."""
import numpy as np

from axturbo.convert.common import StateDict, layer_norm, linear, stack_layers
from axturbo.models.video_cond import VideoConditioner


def _temporal_layer(sd: StateDict, cfg: VideoConditioner) -> dict:
  d, inner = cfg.dim, cfg.heads * cfg.dim_head
  # to_qkv rows are the contiguous blocks [Wq; Wk; Wv], each (inner, D) with heads (h d).
  qkv = sd.take('0.fn.to_qkv.weight', (3 * inner, d))
  params = {name: {'kernel': np.ascontiguousarray(qkv[i * inner:(i + 1) * inner].T)}
            for i, name in enumerate(('query', 'key', 'value'))}
  params.update({
      'attn_norm': layer_norm(sd, '0.norm', d),
      'attn_out': linear(sd, '0.fn.to_out.0', inner, d),
      'ff_norm': layer_norm(sd, '1.norm', d),
      'ff_in': linear(sd, '1.fn.net.0', d, cfg.mlp_dim),
      'ff_out': linear(sd, '1.fn.net.3', cfg.mlp_dim, d),
  })
  return params


def video_conditioner_params(sd: StateDict, cfg: VideoConditioner) -> dict:
  """Maps `sd` scoped at 'conditioner.conditioners.video_prompt.' to `cfg`'s parameter tree.

  `visual_encoder_model.*` (CLIP) is left untouched for the CLIP loader.
  """
  d, t, q = cfg.dim, cfg.num_frames, cfg.tokens_per_frame
  return {
      'temp_pos_embedding': sd.take('Temp_pos_embedding', (1, t, d))[0],
      'temporal_layers': stack_layers([
          _temporal_layer(sd.scope(f'Temp_transformer.layers.{i}.'), cfg)
          for i in range(cfg.depth)]),
      'temporal_norm': layer_norm(sd, 'Temp_transformer.norm', d),
      'proj': linear(sd, 'proj', t * q, cfg.out_tokens),
      'proj_sync': linear(sd, 'proj_sync', cfg.sync_len, cfg.out_tokens),
      'sync_weight': sd.take('sync_weight', ()),
      'empty_visual_feat': sd.take('empty_visual_feat', (1, cfg.out_tokens, d))[0],
  }

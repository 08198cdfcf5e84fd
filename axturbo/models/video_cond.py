"""Video conditioner after CLIP (official `CLIPWithSyncWithEmptyFeatureConditioner`, doc §2.1).

Input: CLIP `last_hidden_state` for every frame plus Synchformer features. A temporal
transformer runs along the frame axis for every CLIP token position; the (frame, token) grid is
then mapped to `out_tokens` tokens by the official *row-major reshape* projection (it mixes
tokens and channels; see `_reshape_project`), the sync features are added the same way, and
videos that were all zeros get the learned `empty_visual_feat` instead.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.models import layers

_SEQ = ('act_batch', 'act_length', 'act_embed')


class TemporalLayer(layers.PreLNLayer):
  """One pre-LN layer of the official `SA_Transformer`; scanned over `depth`.

  x += to_out(MHA(LN x)); x += W2 GELU(W1 LN x). `to_qkv` (no bias) is split into
  query/key/value, each (D, heads*dim_head) with heads contiguous. Fields:
  `layers.PreLNLayer`'s, then the width `dim` and the heads.
  """
  dim: int
  heads: int
  dim_head: int

  @nn.compact
  def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
    inner = self.heads * self.dim_head
    h = self.norm('attn_norm')(x)
    q, k, v = (layers.dense(inner, ('embed', 'heads'), use_bias=False, dtype=self.dtype,
                            name=name)(h).reshape(h.shape[:-1] + (self.heads, self.dim_head))
               for name in ('query', 'key', 'value'))
    a = layers.attention(q, k, v, implementation=self.attention_impl)
    a = a.reshape(a.shape[:-2] + (inner,))
    x = x + layers.dense(self.dim, ('heads', 'embed'), dtype=self.dtype, name='attn_out')(a)
    return self.feed_forward(x, ('ff_norm', 'ff_in', 'ff_out')), None


class VideoConditioner(nn.Module):
  """CLIP frame tokens + sync features -> (B, out_tokens, dim) video conditioning tokens.

  Attributes:
    dim: CLIP/conditioning width D (768).
    num_frames: video frames T (50 = 10 s at 5 fps).
    tokens_per_frame: CLIP tokens per frame Q (50 = CLS + 7x7 patches).
    sync_len: Synchformer tokens S (240); also the input width of `proj_sync`.
    sync_dim: Synchformer feature width (768); must equal `dim` (the official reshape needs it).
    out_tokens: output tokens (128).
    depth, heads, dim_head, mlp_dim: temporal transformer (4, 16, 64, 3072).
    eps: LayerNorm epsilon.
    dtype: compute dtype.
    attention_impl: passed to `layers.attention`.
  """
  dim: int = 768
  num_frames: int = 50
  tokens_per_frame: int = 50
  sync_len: int = 240
  sync_dim: int = 768
  out_tokens: int = 128
  depth: int = 4
  heads: int = 16
  dim_head: int = 64
  mlp_dim: int = 3072
  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None

  @staticmethod
  def is_empty_video(frames: jax.Array) -> jax.Array:
    """(B, ...) raw frames -> (B,) bool, True where every value is exactly 0 (official L512)."""
    return jnp.all(frames == 0, axis=tuple(range(1, frames.ndim)))

  def _check(self, clip_tokens, sync, is_empty) -> None:
    if self.sync_dim != self.dim:
      raise ValueError(f'sync_dim ({self.sync_dim}) must equal dim ({self.dim}): the official '
                       'reshape projection adds sync rows of width sync_dim to video rows of dim')
    want = (self.num_frames, self.tokens_per_frame, self.dim)
    if clip_tokens.ndim != 4 or clip_tokens.shape[1:] != want:
      raise ValueError(f'clip_tokens must be (B, {", ".join(map(str, want))}), '
                       f'got {clip_tokens.shape}')
    b = clip_tokens.shape[0]
    if sync.shape != (b, self.sync_len, self.sync_dim):
      raise ValueError(f'sync must be ({b}, {self.sync_len}, {self.sync_dim}), got {sync.shape}')
    if is_empty.shape != (b,):
      raise ValueError(f'is_empty must be ({b},), got {is_empty.shape}')

  @nn.compact
  def __call__(self, clip_tokens: jax.Array, sync: jax.Array, is_empty: jax.Array) -> jax.Array:
    """Builds the video tokens.

    Args:
      clip_tokens: (B, T, Q, D) CLIP `last_hidden_state` per frame (before post_layernorm).
      sync: (B, S, Ds) Synchformer features.
      is_empty: (B,) bool, from `is_empty_video` on the raw frames.

    Returns:
      (B, out_tokens, D). (The official mask is ones((B, 1)); callers build it if needed.)
    """
    self._check(clip_tokens, sync, is_empty)
    b, t, q, d = clip_tokens.shape
    # (b t) q h -> (b q) t h: attention runs along frames for each CLIP token position.
    h = jnp.transpose(clip_tokens.astype(self.dtype), (0, 2, 1, 3)).reshape(b * q, t, d)
    pos = self.param('temp_pos_embedding',
                     layers.named_init(nn.initializers.normal(1.0), ('length', 'embed')),
                     (t, d), jnp.float32)
    h = layers.constrain(h + pos.astype(self.dtype)[None], _SEQ)
    stack = nn.scan(TemporalLayer, variable_axes={'params': 0}, split_rngs={'params': True},
                    length=self.depth, metadata_params={nn.PARTITION_NAME: 'layers'})
    h, _ = stack(mlp_dim=self.mlp_dim, eps=self.eps, dtype=self.dtype,
                 attention_impl=self.attention_impl, dim=self.dim, heads=self.heads,
                 dim_head=self.dim_head, name='temporal_layers')(h, None)
    h = layers.layer_norm(eps=self.eps, dtype=self.dtype, name='temporal_norm')(h)
    # (b q) t h -> b (t q) h: token index = frame * Q + position.
    h = jnp.transpose(h.reshape(b, q, t, d), (0, 2, 1, 3)).reshape(b, t * q, d)

    video = self._reshape_project(h, 'proj')
    synced = self._reshape_project(sync.astype(self.dtype), 'proj_sync')
    weight = self.param('sync_weight', layers.named_init(nn.initializers.zeros_init(), ()), (),
                        jnp.float32)
    tokens = video + weight.astype(self.dtype) * synced
    empty = self.param('empty_visual_feat',
                       layers.named_init(nn.initializers.zeros_init(), ('length', 'embed')),
                       (self.out_tokens, d), jnp.float32)
    tokens = jnp.where(is_empty[:, None, None], empty.astype(self.dtype)[None], tokens)
    return layers.constrain(tokens, _SEQ)

  def _reshape_project(self, x: jax.Array, name: str) -> jax.Array:
    """(B, L, C) -> (B, out_tokens, C) exactly as the official `proj(x.view(-1, L)).view(B, out, -1)`.

    The row-major reshape to (B, C, L) (not a transpose) makes each projected row a slice of
    L consecutive values of the flattened (L, C) array; the result is reshaped row-major again.
    """
    b, length, c = x.shape
    rows = x.reshape(b, c, length)
    y = layers.dense(self.out_tokens, ('length', None), dtype=self.dtype, name=name)(rows)
    return y.reshape(b, self.out_tokens, c)

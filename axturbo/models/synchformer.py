"""Synchformer's video feature extractor: the sync features the video conditioner adds (§2.1).

The official inference path (`encode_video_with_synchformer`) reads frames at 25 fps squashed
to 224 x 224 (`axturbo.data.video_io.read_frames(path, int(25 * seconds), 224, fps=25)` does
the same, padding a short clip by repeating its last frame), scales them to [-1, 1], cuts
16-frame windows every 8 frames and runs each window through a MotionFormer ViT-B/16 with
divided space-time attention. Each window yields one vector per 2-frame tubelet: the CLS output
of a pre-LN transformer layer run over that tubelet's spatial tokens. 250 frames -> 30 windows
-> (240, 768).

Arrays are channels-last: frames (B, F, H, W, 3). Windows are folded into the batch axis, so
they shard like any batch ('act_batch').
"""
import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.models.layers import (PreLNLayer, attention, constrain, dense, layer_norm,
                                   named_init, stack_layers)

Dtype = jnp.dtype

SYNC_FPS = 25
SYNC_SIZE = 224
SEGMENT_FRAMES = 16
SEGMENT_STRIDE = 8
SYNC_MEAN = 0.5
SYNC_STD = 0.5

_ACT = ('act_batch', 'act_length', 'act_embed')


def num_sync_frames(seconds: float, fps: int = SYNC_FPS) -> int:
  """Frames the official reader returns for `seconds` of video (int, as `adjust_video_duration`)."""
  return int(seconds * fps)


def num_segments(num_frames: int, size: int = SEGMENT_FRAMES,
                 stride: int = SEGMENT_STRIDE) -> int:
  """Windows of `size` frames every `stride` frames; trailing frames that fill none are unused."""
  if num_frames < size:
    raise ValueError(f'sync features need at least {size} frames, got {num_frames}')
  return (num_frames - size) // stride + 1


def normalize_frames(frames) -> jax.Array:
  """[0, 255]-valued frames (..., H, W, 3), any dtype -> float32 in [-1, 1], same shape.

  Scale, then shift, in the official transform's order (ToDtype scales by 1/255, Normalize
  subtracts 0.5 and divides by 0.5); on CPU the test finds the two bit-identical.
  """
  frames = jnp.asarray(frames)
  if frames.ndim < 3 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be (..., H, W, 3) channels-last, got shape {frames.shape}')
  x = frames.astype(jnp.float32) / 255.0
  return (x - SYNC_MEAN) / SYNC_STD


def segment_frames(frames: jax.Array, size: int = SEGMENT_FRAMES,
                   stride: int = SEGMENT_STRIDE) -> jax.Array:
  """(B, F, H, W, C) -> (B, S, size, H, W, C), window s covering frames [s * stride, + size)."""
  s = num_segments(frames.shape[1], size, stride)
  # A gather by index keeps this one op whatever S is (a Python loop of slices would not).
  idx = jnp.arange(s)[:, None] * stride + jnp.arange(size)[None, :]
  return frames[:, idx]


class DividedAttention(nn.Module):
  """One half of a divided space-time block: attention along time or along space.

  Tokens (N, 1 + t*n, D) are [CLS, frame 0's n patches, frame 1's, ...]. The CLS query sees
  every token. A patch query sees the CLS token plus the patches sharing its spatial position
  (axis='time') or its frame (axis='space').
  """
  num_heads: int
  num_frames: int
  axis: str
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.axis not in ('time', 'space'):
      raise ValueError(f"axis must be 'time' or 'space', got {self.axis!r}")
    b, length, width = x.shape
    h, dh, t = self.num_heads, width // self.num_heads, self.num_frames
    n = (length - 1) // t
    q, k, v = (dense(width, ('embed', 'heads'), dtype=self.dtype, name=f'{name}_proj')(x)
               .reshape(b, length, h, dh) for name in ('q', 'k', 'v'))
    # Softmax scale Dh^-1/2 inside `attention`, where the official code scales q.
    cls_out = attention(q[:, :1], k, v, implementation=self.attention_impl)  # (b, 1, h, dh)

    def grouped(a):  # (b, t*n, h, dh) -> (b*g, L, h, dh): one sequence per group
      a = a.reshape(b, t, n, h, dh)
      if self.axis == 'time':
        a = a.transpose(0, 2, 1, 3, 4)  # group by position, sequence over frames
      return a.reshape(-1, a.shape[2], h, dh)

    qp, kp, vp = grouped(q[:, 1:]), grouped(k[:, 1:]), grouped(v[:, 1:])
    groups = qp.shape[0] // b
    cls_k = jnp.repeat(k[:, :1], groups, axis=0)  # (b*g, 1, h, dh), batch-major as `grouped`
    cls_v = jnp.repeat(v[:, :1], groups, axis=0)
    out = attention(qp, jnp.concatenate([cls_k, kp], 1), jnp.concatenate([cls_v, vp], 1),
                    implementation=self.attention_impl)
    if self.axis == 'time':
      out = out.reshape(b, n, t, h, dh).transpose(0, 2, 1, 3, 4)
    out = jnp.concatenate([cls_out, out.reshape(b, t * n, h, dh)], axis=1)
    out = constrain(out.reshape(b, length, width), ('act_batch', 'act_length', 'act_heads'))
    return dense(width, ('heads', 'embed'), dtype=self.dtype, name='out_proj')(out)


class DividedSpaceTimeBlock(PreLNLayer):
  """x += time_attn(LN3 x); x += space_attn(LN1 x); x += MLP(LN2 x). Returns (x, None) for scan.

  Norm names follow the official block (norm3 feeds the time attention, which runs first).
  Fields: `PreLNLayer`'s, then the heads and the frames (tubelets) of the token grid.
  """
  num_heads: int
  num_frames: int

  @nn.compact
  def __call__(self, x: jax.Array, _: None = None) -> tuple[jax.Array, None]:
    attn = lambda axis, name: DividedAttention(self.num_heads, self.num_frames, axis,
                                               self.attention_impl, self.dtype, name=name)
    x = x + attn('time', 'time_attn')(self.norm('norm3')(x))
    x = x + attn('space', 'space_attn')(self.norm('norm1')(x))
    x = self.feed_forward(x, ('norm2', 'fc1', 'fc2'))
    return constrain(x, _ACT), None


class SpatialAggregator(PreLNLayer):
  """(N, n, D) tokens of one tubelet -> (N, D): a learned CLS token prepended, one pre-LN
  transformer layer (PyTorch `TransformerEncoderLayer`, norm_first, exact GELU), CLS output.
  Fields: `PreLNLayer`'s, then the heads."""
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, _, width = x.shape
    h, dh = self.num_heads, width // self.num_heads
    cls = self.param('cls_token', named_init(nn.initializers.normal(0.02), ('embed',)),
                     (width,), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, width)), x], axis=1)
    length = x.shape[1]
    y = self.norm('norm1')(x)
    q, k, v = (dense(width, ('embed', 'heads'), dtype=self.dtype, name=f'{name}_proj')(y)
               .reshape(b, length, h, dh) for name in ('q', 'k', 'v'))
    # Only the CLS row of the layer's output is kept, so only its query is needed.
    a = attention(q[:, :1], k, v, implementation=self.attention_impl).reshape(b, 1, width)
    x = x[:, :1] + dense(width, ('heads', 'embed'), dtype=self.dtype, name='out_proj')(a)
    return self.feed_forward(x, ('norm2', 'fc1', 'fc2'))[:, 0]


class Synchformer(nn.Module):
  """Synchformer's visual branch (MotionFormer, divided space-time attention, spatial CLS
  aggregation). `__call__`: normalised windows (N, T, H, W, 3) -> (N, T / tubelet_size, D);
  `encode_frames`: [0, 255] frames (B, F, H, W, 3) -> (B, S * T / tubelet_size, D).

  Defaults are the released extractor (ViT-B/16, 16-frame windows of 8 tubelets, 224 x 224).
  Parameters: `patch_embed` Conv3d kernel (tubelet, p, p, 3, D) + bias; `cls_token` (D,);
  `pos_embed` (1 + (H/p)^2, D) for CLS and the spatial grid; `temp_embed` (T / tubelet, D);
  `blocks_{i}` (or stacked `blocks`); `norm`; `spatial_agg`.
  """
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  patch_size: int = 16
  tubelet_size: int = 2
  num_frames: int = SEGMENT_FRAMES
  image_size: int = SYNC_SIZE
  eps: float = 1e-6
  scan_layers: bool = False
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def tubelets(self) -> int:
    return self.num_frames // self.tubelet_size

  def _check(self, segments: jax.Array) -> None:
    want = (self.num_frames, self.image_size, self.image_size, 3)
    if segments.ndim != 5 or tuple(segments.shape[1:]) != want:
      raise ValueError(f'segments must be (N, {", ".join(map(str, want))}), got '
                       f'{segments.shape}')
    if self.embed_dim % self.num_heads:
      raise ValueError(f'embed_dim {self.embed_dim} not divisible by {self.num_heads} heads')

  def _embed(self, segments: jax.Array) -> jax.Array:
    """(N, T, H, W, 3) -> (N, 1 + t*n, D): CLS, then tubelet tokens frame-major."""
    d, p, kt = self.embed_dim, self.patch_size, self.tubelet_size
    # 'length' names the temporal taps: one name may not repeat within a kernel.
    x = nn.Conv(d, (kt, p, p), strides=(kt, p, p), padding='VALID', dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=named_init(nn.initializers.lecun_normal(),
                                       ('length', 'conv_height', 'conv_width', 'channels',
                                        'embed')),
                bias_init=named_init(nn.initializers.zeros_init(), ('embed',)),
                name='patch_embed')(segments.astype(self.dtype))
    n_seg, n = x.shape[0], self.grid ** 2
    x = x.reshape(n_seg, self.tubelets * n, d)
    init = named_init(nn.initializers.normal(0.02), ('length', 'embed'))
    cls = self.param('cls_token', named_init(nn.initializers.normal(0.02), ('embed',)), (d,),
                     jnp.float32)
    pos = self.param('pos_embed', init, (1 + n, d), jnp.float32)
    temp = self.param('temp_embed', init, (self.tubelets, d), jnp.float32)
    # Token (f, j) gets spatial position j plus tubelet f; CLS gets position 0 only.
    patch_pos = (temp[:, None, :] + pos[None, 1:, :]).reshape(self.tubelets * n, d)
    cls = jnp.broadcast_to((cls + pos[0]).astype(self.dtype), (n_seg, 1, d))
    return jnp.concatenate([cls, x + patch_pos.astype(self.dtype)], axis=1)

  @nn.compact
  def __call__(self, segments: jax.Array) -> jax.Array:
    """segments: (N, T, H, W, 3) normalised -> (N, T / tubelet_size, embed_dim)."""
    self._check(segments)
    x = constrain(self._embed(segments), _ACT)
    layer_fields = dict(mlp_dim=self.mlp_ratio * self.embed_dim, eps=self.eps, dtype=self.dtype,
                        attention_impl=self.attention_impl, num_heads=self.num_heads)
    x = stack_layers(DividedSpaceTimeBlock, dict(layer_fields, num_frames=self.tubelets),
                     self.depth, scan=self.scan_layers, name='blocks', x=x)
    # The backbone's CLS token is dropped: only the per-tubelet aggregation is used.
    x = layer_norm(eps=self.eps, dtype=self.dtype, name='norm')(x[:, 1:])
    n_seg, d = x.shape[0], self.embed_dim
    x = x.reshape(n_seg * self.tubelets, self.grid ** 2, d)
    x = SpatialAggregator(**layer_fields, name='spatial_agg')(x)
    return constrain(x.reshape(n_seg, self.tubelets, d), _ACT)

  def encode_frames(self, frames) -> jax.Array:
    """[0, 255] frames (B, F, H, W, 3), F >= num_frames -> sync features (B, S * t, D).

    S = (F - 16) // 8 + 1 windows (`num_segments`); all B * S windows run as one batch.
    """
    x = segment_frames(normalize_frames(frames), self.num_frames, SEGMENT_STRIDE)
    b, s = x.shape[:2]
    x = constrain(x.reshape((b * s,) + x.shape[2:]), ('act_batch', None, None, None, None))
    return self(x).reshape(b, s * self.tubelets, self.embed_dim)


# The fields that size an extractor: a checkpoint's `model_config.json` `synchformer` section.
CONFIG_FIELDS = ('embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'patch_size', 'tubelet_size',
                 'num_frames', 'image_size', 'eps')


def config_of(model: Synchformer) -> dict:
  """The `synchformer` config section that rebuilds `model`."""
  return {f: getattr(model, f) for f in CONFIG_FIELDS}


def from_config(section: Mapping | None, **overrides) -> Synchformer:
  """A Synchformer from a `synchformer` config section; the released sizes when it is None."""
  fields = {f.name for f in dataclasses.fields(Synchformer)}
  kwargs = {k: v for k, v in dict(section or {}).items() if k in fields}
  return Synchformer(**kwargs, **overrides)


def sync_len(model: Synchformer, seconds: float) -> int:
  """Sync tokens for `seconds` of video: 10 s -> 250 frames -> 30 windows x 8 = 240."""
  return num_segments(num_sync_frames(seconds), model.num_frames) * model.tubelets

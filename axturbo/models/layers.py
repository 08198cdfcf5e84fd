"""Layers shared by every network; each parameter carries logical axis names.

Logical names are the vocabulary in `axturbo.runtime.sharding`; configs map them to mesh axes.
Parameters are float32 (master weights); `dtype` is the compute dtype.
"""
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def named_init(init, axes: Sequence[str | None]):
  """Wraps an initializer so the parameter it makes carries logical axis names."""
  return nn.with_logical_partitioning(init, tuple(axes))


def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool = True,
          dtype: Dtype = jnp.float32, kernel_init=nn.initializers.lecun_normal(),
          name: str | None = None) -> nn.Dense:
  """Dense layer with kernel (in, out) named `axes` and bias (out,) named `axes[1:]`."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=named_init(kernel_init, axes),
                  bias_init=named_init(nn.initializers.zeros_init(), axes[1:]), name=name)


def conv1d(features: int, kernel_size: int, axes: tuple[str | None, str | None], *,
           stride: int = 1, padding: int | None = None, dilation: int = 1, use_bias: bool = True,
           dtype: Dtype = jnp.float32, kernel_init=nn.initializers.lecun_normal(),
           name: str | None = None) -> nn.Conv:
  """Channels-last Conv1d, (B, T, C_in) -> (B, T', features), PyTorch padding semantics.

  Kernel is (k, in, out) with names ('conv_width', *axes). `padding` defaults to the symmetric
  `dilation * (k - 1) // 2` that PyTorch's `padding=k//2` gives for odd k.
  """
  if padding is None:
    padding = dilation * (kernel_size - 1) // 2
  return nn.Conv(features, (kernel_size,), strides=(stride,), padding=[(padding, padding)],
                 kernel_dilation=(dilation,), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32,
                 kernel_init=named_init(kernel_init, ('conv_width',) + tuple(axes)),
                 bias_init=named_init(nn.initializers.zeros_init(), axes[1:]), name=name)


def conv_taps(x: jax.Array, kernel_size: int) -> jax.Array:
  """(B, T, C) -> (B, T, kernel_size * C): the zero-padded neighbourhood of each position
  ('same' padding, odd kernel), tap-major, so `conv_taps(x, k) @ kernel.reshape(k * C, F)`
  equals the stride-1 `conv1d` with kernel (k, C, F)."""
  pad = (kernel_size - 1) // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
  return jnp.concatenate([xp[:, i:i + x.shape[1]] for i in range(kernel_size)], axis=-1)


def conv_as_matmul() -> bool:
  """Whether the trunk's FFN input convolutions run as one matmul over `conv_taps` (the
  shifted-matmul form) instead of `lax.conv`: on CPU, where XLA's convolution of the D -> hidden
  FFN shapes measured slower than the matmul form (docs/benchmarks.md, issue 38); elsewhere
  `lax.conv` (not measured on GPU/TPU). Decided at trace time from the default backend."""
  return jax.default_backend() == 'cpu'


class TapsConv1d(nn.Module):
  """A bias-free, 'same'-padded stride-1 Conv1d with `conv1d`'s parameter (kernel (k, in,
  out), names ('conv_width', *axes)), applied to precomputed `conv_taps` columns: one matmul.
  Several convolutions of one input share the columns."""
  features: int
  kernel_size: int
  axes: tuple[str | None, str | None]
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, taps: jax.Array) -> jax.Array:
    """taps (B, T, k * C_in) from `conv_taps` -> (B, T, features)."""
    c_in = taps.shape[-1] // self.kernel_size
    kernel = self.param('kernel', named_init(self.kernel_init, ('conv_width',) + tuple(self.axes)),
                        (self.kernel_size, c_in, self.features), jnp.float32)
    kernel = kernel.astype(self.dtype).reshape(self.kernel_size * c_in, self.features)
    return jnp.dot(taps.astype(self.dtype), kernel)


def layer_norm(*, use_affine: bool = True, eps: float = 1e-5, axis_name: str = 'norm',
               dtype: Dtype = jnp.float32, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm over the last axis; statistics in float32 whatever the compute dtype."""
  # use_fast_variance=False: E[x^2] - E[x]^2 loses precision on inputs with a large mean.
  return nn.LayerNorm(epsilon=eps, use_bias=use_affine, use_scale=use_affine, dtype=dtype,
                      param_dtype=jnp.float32, use_fast_variance=False,
                      scale_init=named_init(nn.initializers.ones_init(), (axis_name,)),
                      bias_init=named_init(nn.initializers.zeros_init(), (axis_name,)),
                      name=name)


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / sqrt(mean(x^2) + eps) over the last axis (no learnable scale), computed in float32."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return y.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str | None = None
              ) -> jax.Array:
  """Unmasked softmax attention. q: (B, Tq, N, H), k/v: (B, Tk, N, H) -> (B, Tq, N, H).

  `implementation=None`: on CPU `heads_major_attention` (faster there, docs/benchmarks.md),
  elsewhere XLA's `jax.nn.dot_product_attention`; 'cudnn' selects the cuDNN flash kernel on GPU.
  Decided at trace time from the default backend.
  """
  if implementation is None and jax.default_backend() == 'cpu':
    return heads_major_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


def heads_major_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`attention` as batched (B, N) matmuls on head-major copies, normalised after the
  value product: softmax(s) @ v = (exp(s - max s) @ v) / sum exp(s - max s), so the division
  runs over (Tq, H) instead of (Tq, Tk) per head. Same shapes as `attention`."""
  scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  qh = jnp.transpose(q * scale, (0, 2, 1, 3))   # (B, N, Tq, H)
  kh = jnp.transpose(k, (0, 2, 3, 1))           # (B, N, H, Tk)
  vh = jnp.transpose(v, (0, 2, 1, 3))           # (B, N, Tk, H)
  s = jnp.matmul(qh, kh, preferred_element_type=jnp.float32)
  p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  o = jnp.matmul(p.astype(v.dtype), vh, preferred_element_type=jnp.float32)
  o = o / jnp.sum(p, axis=-1, keepdims=True)
  return jnp.transpose(o, (0, 2, 1, 3)).astype(q.dtype)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding hint for an activation by logical names; a no-op outside a mesh/rules context."""
  return nn.with_logical_constraint(x, tuple(axes))


def stack_layers(layer_cls: type[nn.Module], fields: dict, depth: int, *, scan: bool, name: str,
                 x: jax.Array, broadcast: tuple = ()) -> jax.Array:
  """`depth` layers `layer_cls(**fields)` applied in turn: (x, *broadcast) -> (x, None) each.

  Call inside a compact method. scan=True stacks their parameters under `name` with a leading
  'layers' axis (nn.scan; `broadcast` reaches every layer unchanged); otherwise they are
  `{name}_{i}`, the released checkpoints' layout.
  """
  if scan:
    stack = nn.scan(layer_cls, variable_axes={'params': 0}, split_rngs={'params': True},
                    in_axes=nn.broadcast if broadcast else 0, length=depth,
                    metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = stack(**fields, name=name)(x, *(broadcast or (None,)))
    return x
  for i in range(depth):
    x, _ = layer_cls(**fields, name=f'{name}_{i}')(x, *broadcast)
  return x


class PreLNLayer(nn.Module):
  """Base of the pre-LN transformer layers (torch `TransformerEncoderLayer(norm_first=True)`
  and kin): the fields they share and their feed-forward half, x + W2 GELU(W1 LN x).

  Subclasses add their fields after these, so construct them by keyword.

  Attributes:
    mlp_dim: hidden width of the feed-forward half.
    eps: LayerNorm epsilon.
    dtype: compute dtype.
    attention_impl: passed to `attention`.
  """
  mlp_dim: int
  eps: float
  dtype: Dtype
  attention_impl: str | None

  def norm(self, name: str) -> nn.LayerNorm:
    return layer_norm(eps=self.eps, dtype=self.dtype, name=name)

  def feed_forward(self, x: jax.Array, names: tuple[str, str, str],
                   drop: Callable[[jax.Array], jax.Array] = lambda y: y) -> jax.Array:
    """x + drop(W2 drop(GELU(W1 LN x))), exact GELU; `names` are the checkpoint's names of
    LN, W1 and W2. Call inside the subclass's compact method."""
    norm, w_in, w_out = names
    h = dense(self.mlp_dim, ('embed', 'mlp'), dtype=self.dtype, name=w_in)(self.norm(norm)(x))
    h = drop(nn.gelu(constrain(h, ('act_batch', 'act_length', 'act_mlp')), approximate=False))
    return x + drop(dense(x.shape[-1], ('mlp', 'embed'), dtype=self.dtype, name=w_out)(h))

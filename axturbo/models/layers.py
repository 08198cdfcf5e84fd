"""Layers shared by every network; each parameter carries logical axis names.

Logical names are the vocabulary in `axturbo.runtime.sharding`; configs map them to mesh axes.
Parameters are float32 (master weights); `dtype` is the compute dtype.
"""
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def winograd_filters(kernel: jax.Array) -> jax.Array:
  """A kernel-3 Conv1d kernel (3, C, F) as the 4 filters of Winograd's F(2, 3) (4, C, F):
  (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2), computed in float32 (one rounding) and
  returned in the kernel's dtype. numpy in, numpy out; jax in, jax out."""
  if kernel.shape[0] != 3:
    raise ValueError(f'winograd_filters needs a kernel-3 Conv1d kernel (3, C, F), '
                     f'got {tuple(kernel.shape)}')
  stack = np.stack if isinstance(kernel, np.ndarray) else jnp.stack
  g0, g1, g2 = (kernel[i].astype(np.float32) for i in range(3))
  return stack([g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2]).astype(kernel.dtype)


def winograd_conv3(x: jax.Array, filters: jax.Array) -> jax.Array:
  """Stride-1 'same'-padded kernel-3 Conv1d (cross-correlation, as `conv1d`) by Winograd's
  minimal filtering F(2, 3): each pair of outputs from 4 matmuls instead of 6.

  With d0..d3 = x[2m-1 .. 2m+2], taps g0, g1, g2 (each (C, F)) and `winograd_filters` u:
    y[2m] = m0 + m1 + m2,  y[2m+1] = m1 - m2 - m3,  where
    m0 = (d0 - d2) u0,  m1 = (d1 + d2) u1,  m2 = (d2 - d1) u2,  m3 = (d1 - d3) u3.
  So the convolution costs 2/3 of the matmul FLOPs of `lax.conv` or of a matmul over shifted
  copies, as one batched product of 4 x (B * ceil(T/2)) rows. x: (B, T, C); filters:
  (4, C, F) from `winograd_filters` -> (B, T, F) in x's dtype.
  """
  b, length, c = x.shape
  half = -(-length // 2)
  # xp[j] = x[j - 1], zero outside; its even and odd positions give d0, d2 and d1, d3.
  xp = jnp.pad(x, ((0, 0), (1, 2 * half + 1 - length), (0, 0))).reshape(b, half + 1, 2, c)
  even, odd = xp[:, :, 0], xp[:, :, 1]
  d = jnp.stack([even[:, :-1] - even[:, 1:], odd[:, :-1] + even[:, 1:],
                 even[:, 1:] - odd[:, :-1], odd[:, :-1] - odd[:, 1:]]).reshape(4, b * half, c)
  m = jax.lax.dot_general(d, filters.astype(x.dtype), (((2,), (1,)), ((0,), (0,))))
  m = m.reshape(4, b, half, -1)
  y = jnp.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]], axis=2)   # (B, half, 2, F)
  return y.reshape(b, 2 * half, -1)[:, :length]


def same_conv1d(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 'same'-padded Conv1d by `lax.conv` (as `conv1d`, odd kernel). x: (B, T, C);
  kernel: (k, C, F) -> (B, T, F) in x's dtype."""
  pad = (kernel.shape[0] - 1) // 2
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1,), [(pad, pad)],
                                      dimension_numbers=('NWC', 'WIO', 'NWC'))


def winograd_backend() -> bool:
  """Whether the inference layout runs kernel-3 convolutions as `winograd_conv3`: on CPU,
  where it measured faster than `lax.conv` at the trunk's shapes (docs/benchmarks.md, issue
  38); elsewhere `lax.conv` (not measured on GPU/TPU)."""
  return jax.default_backend() == 'cpu'


class SameConv1d(nn.Module):
  """A stride-1 'same'-padded Conv1d (odd kernel) with `conv1d`'s parameters: kernel (k, in,
  out) named ('conv_width', *axes), bias (out,). (B, T, C_in) -> (B, T, features).

  `winograd=True` (kernel_size 3 only) holds the kernel as its `winograd_filters` (4, in, out)
  and runs `winograd_conv3`: the same function, for a tree converted once at load.
  """
  features: int
  kernel_size: int
  axes: tuple[str | None, str | None]
  use_bias: bool = True
  winograd: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.winograd and self.kernel_size != 3:
      raise ValueError(f'winograd convolutions need kernel_size 3, got {self.kernel_size}')
    shape = (self.kernel_size, x.shape[-1], self.features)
    init = self.kernel_init
    if self.winograd:   # the same draw as the plain kernel, converted
      init = lambda key, shape, dtype, f=init: winograd_filters(f(key, shape, dtype))
    kernel = self.param('kernel', named_init(init, ('conv_width',) + tuple(self.axes)), shape,
                        jnp.float32)
    x = x.astype(self.dtype)
    y = winograd_conv3(x, kernel) if self.winograd else same_conv1d(x, kernel)
    if self.use_bias:
      bias = self.param('bias', named_init(nn.initializers.zeros_init(), self.axes[1:]),
                        (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


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

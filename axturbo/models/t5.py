"""T5 encoder (Hugging Face `T5EncoderModel` numerics), used frozen as the text conditioner.

AudioX-Turbo encodes prompts with `t5-base`, padded to 128 tokens, and multiplies the output by
the attention mask so padded rows are exactly zero (`T5Conditioner`). The raw `T5Encoder` equals
HF's `last_hidden_state`. T5 specifics: RMS ("T5") layer norm with a scale only, no biases
anywhere, unscaled dot-product attention, and a bucketed relative position bias owned by the
first layer and added in every layer.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axturbo.models.layers import constrain, dense, named_init, stack_layers
from axturbo.models.activations import hf_activation

Dtype = jnp.dtype


def parse_feed_forward_proj(spec: str) -> tuple[str, bool]:
  """HF `feed_forward_proj` ('relu', 'gated-gelu', 'gated-silu', ...) -> (activation, gated)."""
  parts = spec.split('-')
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != 'gated'):
    raise ValueError(f"feed_forward_proj {spec!r} is not '<act>' or 'gated-<act>'")
  if spec == 'gated-gelu':  # HF maps this historical name to the tanh approximation
    return 'gelu_new', True
  hf_activation(parts[-1])  # validates the name
  return parts[-1], len(parts) == 2


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of (key - query) offsets, (q_len, k_len) int32.

  Computed on the host in float32 exactly as HF does in PyTorch: half the buckets for each
  direction; within one, exact offsets below `num_buckets // 4`, then logarithmic bins up to
  `max_distance`, clamped. (float64 would move a few boundary offsets to another bucket.)
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  out = (rel > 0).astype(np.int64) * half
  dist = np.abs(rel)
  max_exact = half // 2
  with np.errstate(divide='ignore'):
    ratio = np.log(dist.astype(np.float32) / np.float32(max_exact))
    scaled = ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
  large = max_exact + np.where(dist > 0, scaled, 0.0).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (out + np.where(dist < max_exact, dist, large)).astype(np.int32)


def _clamp_fp16(x: jax.Array) -> jax.Array:
  """HF T5 keeps float16 activations finite by clamping after each residual sub-layer."""
  if x.dtype != jnp.float16:
    return x
  big = jnp.finfo(jnp.float16).max
  limit = jnp.where(jnp.any(jnp.isinf(x)), big - 1000, big).astype(x.dtype)
  return jnp.clip(x, -limit, limit)


class T5RMSNorm(nn.Module):
  """Scale-only RMS norm; statistics in float32, HF's cast-then-scale order."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', named_init(nn.initializers.ones_init(), ('norm',)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * y.astype(self.dtype)


class T5SelfAttention(nn.Module):
  """Unscaled multi-head attention with an additive bias. (B, L, D) -> (B, L, D)."""
  d_model: int
  num_heads: int
  d_kv: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    """x: (B, L, D); bias: (B or 1, N, L, L) position bias plus padding mask."""
    b, length, _ = x.shape
    inner = self.num_heads * self.d_kv
    heads = lambda t: t.reshape(b, length, self.num_heads, self.d_kv)
    q, k, v = (heads(dense(inner, ('embed', 'heads'), use_bias=False, dtype=self.dtype,
                           name=n)(x)) for n in ('q', 'k', 'v'))
    scores = jnp.einsum('bqnh,bknh->bnqk', q, k) + bias.astype(self.dtype)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum('bnqk,bknh->bqnh', weights, v).reshape(b, length, inner)
    out = constrain(out, ('act_batch', 'act_length', 'act_heads'))
    return dense(self.d_model, ('heads', 'embed'), use_bias=False, dtype=self.dtype, name='o')(out)


class T5FeedForward(nn.Module):
  """wo(act(wi x)) or, gated, wo(act(wi_0 x) * wi_1 x). (B, L, D) -> (B, L, D)."""
  d_model: int
  d_ff: int
  activation: str = 'relu'
  gated: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = hf_activation(self.activation)
    up = lambda name: dense(self.d_ff, ('embed', 'mlp'), use_bias=False, dtype=self.dtype,
                            name=name)(x)
    h = act(up('wi_0')) * up('wi_1') if self.gated else act(up('wi'))
    h = constrain(h, ('act_batch', 'act_length', 'act_mlp'))
    return dense(self.d_model, ('mlp', 'embed'), use_bias=False, dtype=self.dtype, name='wo')(h)


class T5Block(nn.Module):
  """Pre-norm residual self-attention then feed-forward. Returns (x, None) so it can be scanned."""
  d_model: int
  d_kv: int
  d_ff: int
  num_heads: int
  activation: str
  gated: bool
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> tuple[jax.Array, None]:
    norm = lambda name: T5RMSNorm(self.eps, self.dtype, name=name)
    h = norm('attention_norm')(x)
    x = _clamp_fp16(x + T5SelfAttention(self.d_model, self.num_heads, self.d_kv, self.dtype,
                                        name='attention')(h, bias))
    h = norm('ff_norm')(x)
    x = _clamp_fp16(x + T5FeedForward(self.d_model, self.d_ff, self.activation, self.gated,
                                      self.dtype, name='ff')(h))
    return constrain(x, ('act_batch', 'act_length', 'act_embed')), None


class T5Encoder(nn.Module):
  """HF `T5EncoderModel` in eval mode: `(input_ids, attention_mask) -> last_hidden_state`.

  Fields follow the HF config (`layer_norm_epsilon` is `eps`). Parameters:
  `shared.embedding` (vocab, d_model), `relative_attention_bias` (buckets, heads),
  `layers_{i}` (or `layers`, stacked on a leading axis, with `scan_layers`), `final_norm`.
  """
  vocab_size: int = 32128
  d_model: int = 768
  d_kv: int = 64
  d_ff: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  eps: float = 1e-6
  feed_forward_proj: str = 'relu'
  scan_layers: bool = False
  dtype: Dtype = jnp.float32

  def _check_inputs(self, input_ids: jax.Array, attention_mask: jax.Array) -> None:
    if input_ids.ndim != 2:
      raise ValueError(f'input_ids must be (B, L), got shape {input_ids.shape}')
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f'input_ids must be integers, got {input_ids.dtype}')
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f'attention_mask shape {attention_mask.shape} != input_ids shape '
                       f'{input_ids.shape}')

  def _bias(self, attention_mask: jax.Array, length: int) -> jax.Array:
    """Position bias (1, N, L, L) plus HF's additive key mask (B, 1, 1, L): (B, N, L, L)."""
    table = self.param('relative_attention_bias',
                       named_init(nn.initializers.normal(1.0), (None, 'heads')),
                       (self.relative_attention_num_buckets, self.num_heads), jnp.float32)
    buckets = relative_position_buckets(length, length, self.relative_attention_num_buckets,
                                        self.relative_attention_max_distance)
    position = jnp.transpose(table[buckets], (2, 0, 1))[None].astype(self.dtype)
    keep = attention_mask[:, None, None, :].astype(self.dtype)
    return position + (1.0 - keep) * jnp.finfo(self.dtype).min

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """input_ids: (B, L) int; attention_mask: (B, L) bool/int (1 = token) -> (B, L, d_model)."""
    self._check_inputs(input_ids, attention_mask)
    activation, gated = parse_feed_forward_proj(self.feed_forward_proj)
    embed = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                     embedding_init=named_init(nn.initializers.normal(1.0), ('vocab', 'embed')),
                     name='shared')
    x = constrain(embed(input_ids), ('act_batch', 'act_length', 'act_embed'))
    bias = self._bias(attention_mask, input_ids.shape[1])
    block_fields = dict(d_model=self.d_model, d_kv=self.d_kv, d_ff=self.d_ff,
                        num_heads=self.num_heads, activation=activation, gated=gated,
                        eps=self.eps, dtype=self.dtype)
    x = stack_layers(T5Block, block_fields, self.num_layers, scan=self.scan_layers, name='layers',
                     x=x, broadcast=(bias,))
    return T5RMSNorm(self.eps, self.dtype, name='final_norm')(x)


class T5Conditioner(T5Encoder):
  """The official text conditioner's use of T5: float32 output with padded rows set to 0.

  Same fields and parameter tree as `T5Encoder`.
  Returns (tokens (B, L, d_model) float32, mask (B, L) bool).
  """

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    hidden = super().__call__(input_ids, attention_mask)
    mask = attention_mask.astype(bool)
    return hidden.astype(jnp.float32) * mask[..., None].astype(jnp.float32), mask

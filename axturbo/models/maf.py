"""Multimodal Adaptive Fusion (MAF): expert tokens that refine the three conditioning streams.

The official block (architecture doc §3) has three input slots that its code calls v, t and a.
The official wrapper passes TEXT into slot v and VIDEO into slot t (an argument-order swap that
the released weights were trained with). Here the slots are named by their torch letters and
`modality_order` says which modality each one receives, so the swap is explicit.

Each slot i contributes `num_experts_per_modality` expert rows, in slot order, and its own
LayerNorm (`norm_{v,t,a}2`) and bypass gate (`bypass_gate_{v,t,a}`).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.models import layers

SLOTS = ('v', 't', 'a')
MODALITIES = ('text', 'video', 'audio')
# The released weights: slot v holds text, slot t holds video (diffusion.py:178).
OFFICIAL_MODALITY_ORDER = ('text', 'video', 'audio')

_SEQ = ('act_batch', 'act_length', 'act_embed')


class TorchMultiheadAttention(nn.Module):
  """`torch.nn.MultiheadAttention` (batch_first, biases on), split into q/k/v/out Dense layers.

  torch packs q/k/v as the row blocks of `in_proj_weight`; head n uses features
  [n*H, (n+1)*H) of each block, which is the (heads, head_dim) reshape used here. Dropout on the
  attention probabilities (torch's `dropout_p`) is applied only when `deterministic=False`.

  Attributes:
    dim: model width D (= num_heads * head_dim).
    num_heads: number of heads N.
    dropout: attention-probability dropout rate.
    dtype: compute dtype.
    attention_impl: passed to `layers.attention` on the deterministic path.
  """
  dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, query: jax.Array, context: jax.Array, deterministic: bool = True
               ) -> jax.Array:
    """query: (B, Tq, D), context: (B, Tk, D) -> (B, Tq, D)."""
    head_dim = self.dim // self.num_heads

    def project(name, x):
      y = layers.dense(self.dim, ('embed', 'heads'), dtype=self.dtype, name=name)(x)
      return y.reshape(y.shape[:-1] + (self.num_heads, head_dim))

    q, k, v = project('query', query), project('key', context), project('value', context)
    if deterministic or self.dropout == 0.0:
      out = layers.attention(q, k, v, implementation=self.attention_impl)
    else:
      out = self._dropout_attention(q, k, v)
    out = out.reshape(out.shape[:-2] + (self.dim,))
    return layers.dense(self.dim, ('heads', 'embed'), dtype=self.dtype, name='out')(out)

  def _dropout_attention(self, q, k, v):
    # The fused kernel has no probability dropout, so the training path is written out.
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum('bqnh,bknh->bnqk', q, k).astype(jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1)
    keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - self.dropout), 0.0).astype(v.dtype)
    return jnp.einsum('bnqk,bknh->bqnh', probs, v)


class FusionEncoderLayer(layers.PreLNLayer):
  """torch `TransformerEncoderLayer(norm_first=True, activation=gelu)`; scanned over layers.

  x += Drop(SA(LN1 x)); x += Drop(W2 Drop(GELU(W1 LN2 x))), plus dropout on the attention
  probabilities inside SA, all at rate `dropout` and only when `deterministic` is False.
  Fields: `layers.PreLNLayer`'s, then the width `dim` and these.
  """
  dim: int
  num_heads: int
  dropout: float
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=self.deterministic)
    h = self.norm('norm1')(x)
    h = TorchMultiheadAttention(self.dim, self.num_heads, self.dropout, self.dtype,
                                self.attention_impl, name='self_attn')(
                                    h, h, deterministic=self.deterministic)
    x = x + drop(h)
    x = self.feed_forward(x, ('norm2', 'linear1', 'linear2'), drop)
    return layers.constrain(x, _SEQ), None


class MAFBlock(nn.Module):
  """The MAF block (official `MAF_Block`), refining text/video/audio conditioning tokens.

  Attributes:
    dim: token width D (768).
    num_experts_per_modality: expert tokens per slot E (64; 3E = 192 in all).
    num_heads: heads of the cross-attention and of the fusion layers (24, head dim 32).
    num_layers: fusion encoder layers (8).
    mlp_ratio: fusion feed-forward width / D (4 -> 3072).
    dropout: fusion-layer dropout (torch default 0.1; active only when deterministic=False).
    modality_order: the modality each torch slot (v, t, a) receives. Official value
      ('text', 'video', 'audio'): slot v <- text, slot t <- video, slot a <- audio.
    eps: LayerNorm epsilon.
    dtype: compute dtype.
    attention_impl: passed to `layers.attention` (e.g. 'cudnn').
  """
  dim: int = 768
  num_experts_per_modality: int = 64
  num_heads: int = 24
  num_layers: int = 8
  mlp_ratio: float = 4.0
  dropout: float = 0.1
  modality_order: tuple[str, ...] = OFFICIAL_MODALITY_ORDER
  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None

  def _check(self, tokens: dict) -> None:
    if sorted(self.modality_order) != sorted(MODALITIES):
      raise ValueError(f'modality_order must be a permutation of {MODALITIES}, '
                       f'got {self.modality_order}')
    if self.dim % self.num_heads:
      raise ValueError(f'dim {self.dim} is not divisible by num_heads {self.num_heads}')
    batch = {x.shape[0] for x in tokens.values() if x.ndim == 3}
    for name, x in tokens.items():
      if x.ndim != 3 or x.shape[-1] != self.dim:
        raise ValueError(f'MAF {name} tokens must be (B, L, {self.dim}), got {x.shape}')
    if len(batch) != 1:
      raise ValueError(f'MAF inputs disagree on batch size: '
                       f'{ {k: v.shape for k, v in tokens.items()} }')

  @nn.compact
  def __call__(self, text: jax.Array, video: jax.Array, audio: jax.Array,
               deterministic: bool = True) -> jax.Array:
    """Fuses the three streams.

    Args:
      text: (B, Lt, D); video: (B, Lv, D); audio: (B, La, D).
      deterministic: False enables dropout (needs the 'dropout' rng).

    Returns:
      (B, Lt + Lv + La, D): the refined streams concatenated in slot order, i.e. in
      `modality_order` order ([text, video, audio] for the official configuration).
    """
    given = {'text': text, 'video': video, 'audio': audio}
    self._check(given)
    slots = [layers.constrain(given[m].astype(self.dtype), _SEQ) for m in self.modality_order]
    batch = slots[0].shape[0]

    means = [x.mean(axis=1) for x in slots]                               # 3 x (B, D)
    g = layers.dense(self.dim, ('embed', 'mlp'), dtype=self.dtype, name='gating_network_0')(
        jnp.concatenate(means, axis=-1))
    g = layers.dense(3, ('mlp', None), dtype=self.dtype, name='gating_network_2')(
        nn.gelu(g, approximate=False))
    gates = jax.nn.sigmoid(g)                                             # (B, 3)
    context = jnp.concatenate([x * gates[:, i, None, None] for i, x in enumerate(slots)], axis=1)

    n_exp = self.num_experts_per_modality
    experts = self.param('unified_experts',
                         layers.named_init(nn.initializers.normal(1.0), ('experts', 'embed')),
                         (3 * n_exp, self.dim), jnp.float32).astype(self.dtype)
    experts = jnp.broadcast_to(experts[None], (batch,) + experts.shape)
    info = TorchMultiheadAttention(self.dim, self.num_heads, 0.0, self.dtype,
                                   self.attention_impl, name='cross_attn')(
                                       experts, context)
    fused = layers.layer_norm(eps=self.eps, dtype=self.dtype, name='norm1')(experts + info)
    fused = self._fusion(fused, deterministic)                            # (B, 3E, D)

    outputs = []
    for i, (slot, x) in enumerate(zip(SLOTS, slots)):
      refinement = fused[:, i * n_exp:(i + 1) * n_exp].mean(axis=1)       # (B, D)
      refinement = layers.layer_norm(eps=self.eps, dtype=self.dtype, name=f'norm_{slot}2')(
          refinement)
      gate = self.param(f'bypass_gate_{slot}',
                        layers.named_init(nn.initializers.constant(-10.0), ()), (), jnp.float32)
      outputs.append(x + jax.nn.sigmoid(gate).astype(self.dtype) * refinement[:, None, :])
    return layers.constrain(jnp.concatenate(outputs, axis=1), _SEQ)

  def _fusion(self, x: jax.Array, deterministic: bool) -> jax.Array:
    stack = nn.scan(FusionEncoderLayer, variable_axes={'params': 0},
                    split_rngs={'params': True, 'dropout': True}, length=self.num_layers,
                    metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = stack(mlp_dim=int(self.dim * self.mlp_ratio), eps=self.eps, dtype=self.dtype,
                 attention_impl=self.attention_impl, dim=self.dim, num_heads=self.num_heads,
                 dropout=self.dropout, deterministic=deterministic,
                 name='fusion_layers')(x, None)
    return x

"""GAN discriminator heads over 64-channel teacher read-outs (official `DiscriminatorHead`).

Each head maps one (B, T, C) read-out to patch logits (B, T', 1) with T' ~ T/4 (236 -> 59). In
the distillation run one head exists per truncated teacher depth k = 1..6 and the discriminator
score is the mean of the six heads' logits; the hinge loss is applied to that mean.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.models import layers


class DiscriminatorHead(nn.Module):
  """Conv1d(C->h,k3,p1) LReLU Conv1d(h->2h,k4,s2,p1) LReLU Conv1d(2h->4h,k4,s2,p1) LReLU
  Conv1d(4h->1,k3,p1); channels-last. Layer names follow torch's `net.{0,2,4,6}`.

  Attributes:
    in_channels: read-out channels C (64).
    hidden: h (128).
    negative_slope: LeakyReLU slope (0.2).
    dtype: compute dtype.
  """
  in_channels: int = 64
  hidden: int = 128
  negative_slope: float = 0.2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, C) -> patch logits (B, T', 1) with T' = `output_length(T)` = T // 4."""
    if x.ndim != 3 or x.shape[-1] != self.in_channels:
      raise ValueError(f'discriminator input must be (B, T, {self.in_channels}), got {x.shape}')
    if x.shape[1] < 4:
      raise ValueError(f'discriminator input needs at least 4 frames, got {x.shape[1]}')
    specs = ((self.hidden, 3, 1), (2 * self.hidden, 4, 2), (4 * self.hidden, 4, 2), (1, 3, 1))
    h = x.astype(self.dtype)
    for i, (features, k, stride) in enumerate(specs):
      if i:
        h = nn.leaky_relu(h, self.negative_slope)
      h = layers.conv1d(features, k, (None, 'channels'), stride=stride, padding=1,
                        dtype=self.dtype, name=f'net_{2 * i}')(h)
    return h

  @staticmethod
  def output_length(length: int) -> int:
    """T' for an input of T frames (two k4/s2/p1 convs: T -> T//2 -> T//4)."""
    return length // 2 // 2


class DiscriminatorHeads(nn.Module):
  """`num_heads` independent heads (one per teacher depth), vmapped; returns their mean logits.

  Attributes:
    num_heads: K (6 used of the 24 the official wrapper builds).
    in_channels, hidden, negative_slope, dtype: as `DiscriminatorHead`.
  """
  num_heads: int = 6
  in_channels: int = 64
  hidden: int = 128
  negative_slope: float = 0.2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: jax.Array | Sequence[jax.Array], average: bool = True) -> jax.Array:
    """Scores read-outs.

    Args:
      feats: (K, B, T, C) array or a sequence of K (B, T, C) arrays; feats[k] goes to head k.
      average: True returns the mean over heads (B, T', 1) (the official score); False returns
        every head's logits (K, B, T', 1).
    """
    if not isinstance(feats, jax.Array) and isinstance(feats, (list, tuple)):
      feats = jnp.stack(feats, axis=0)
    if feats.ndim != 4 or feats.shape[0] != self.num_heads:
      raise ValueError(f'expected {self.num_heads} read-outs stacked as (K, B, T, C), '
                       f'got {feats.shape}')
    # An unrolled nn.scan, not nn.vmap: the same stacked parameters, but one ordinary conv per
    # head. A vmapped conv lowers to a grouped convolution, whose gradient XLA:CPU runs ~1000x
    # slower; a rolled scan's backward pass is ~10x slower there too.
    heads = nn.scan(_ScannedHead, variable_axes={'params': 0}, split_rngs={'params': True},
                    in_axes=0, out_axes=0, length=self.num_heads, unroll=self.num_heads,
                    metadata_params={nn.PARTITION_NAME: 'layers'})
    _, logits = heads(self.in_channels, self.hidden, self.negative_slope, self.dtype,
                      name='heads')(None, feats)
    return logits.mean(axis=0) if average else logits


class _ScannedHead(DiscriminatorHead):
  """`DiscriminatorHead` with nn.scan's (carry, x) -> (carry, y) signature, same parameters."""

  def __call__(self, carry, x):  # pylint: disable=arguments-renamed
    return carry, DiscriminatorHead.__call__(self, x)

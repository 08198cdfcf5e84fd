"""The AudioX-Turbo velocity network: an MMDiT-named trunk with per-position adaLN conditioning.

Shapes below use B = batch, T = `seq_len` latent frames (236 for a 10 s clip), L = T + 1 (the
timestep token is prepended at position 0), D = `embed_dim`, N = `num_heads`, H = `head_dim`.

Faithful to the released weights, quirks included (docs/official.md, "Networks and weights"):
  * N x H = 64 x 24 (not 24 x 64) at full size, so both are separate fields here. The
    official config's `num_heads` C is used as a head width: width D splits into N = D // C
    heads of H = D // N (so 120 / "12 heads" is 10 heads of 12). The transposed split has the
    same tensor shapes but other outputs; `axturbo.convert.mmdit.official_trunk_sizes`
    computes the official one, and `python -m axturbo.convert --official_config` applies it.
  * Conditioning enters only as per-position adaLN modulation, made by a dense map along the
    sequence axis (cond_len -> L); there is no attention to conditioning tokens.
  * The official time "cross-attention" has a single key, so it reduces to adding, in every
    block, the headwise-RMS-normalised live half of its kv projection of the time embedding.
    It is computed once per block and sample here; the dead query/key weights are not created.
  * No output projection after self-attention: a kernel-3 conv plays that role; the FFN is a
    kernel-3 convolutional SwiGLU; there is no final norm.
"""
import dataclasses
from typing import Callable

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from axturbo.models import layers

ACT = ('act_batch', 'act_length', 'act_embed')
ACT_HEADS = ('act_batch', 'act_length', 'act_heads', 'act_kv')

# The trunk block's activations that a remat policy can keep by name (`checkpoint_name`):
# q, k and v after RoPE, the attention output before its projection, the FFN's gated hidden
# (B, L, mlp_hidden): the largest). Everything else is recomputed under a named policy.
SAVEABLE_NAMES = ('query', 'key', 'value', 'attention', 'ffn_hidden')
_ATTENTION = ('query', 'key', 'value', 'attention')
_policies = jax.checkpoint_policies

# Rematerialisation policies by name, from storing everything ('none') to storing nothing
# ('full'); the named ones keep chosen activations of each block for the backward pass, and
# 'offload_attention' keeps them in pinned host memory (GPU/TPU backends; docs/benchmarks.md,
# "Remat policies").
REMAT_POLICIES: dict[str, Callable | None] = {
    'none': None,
    'save_attention_ffn': _policies.save_only_these_names(*_ATTENTION, 'ffn_hidden'),
    'save_attention': _policies.save_only_these_names(*_ATTENTION),
    'save_qkv': _policies.save_only_these_names('query', 'key', 'value'),
    'offload_attention': _policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=_ATTENTION,
        offload_src='device', offload_dst='pinned_host'),
    'dots_saveable': _policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': _policies.dots_with_no_batch_dims_saveable,
    'full': _policies.nothing_saveable,
}


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """cos and sin of pos * theta^(-2i/head_dim), each (length, head_dim // 2), float32.

  Built in float32 in the same order of operations as the official buffer.
  """
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head_dim, got {head_dim}')
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  freqs = np.float32(1.0) / np.power(np.float32(theta), exponent, dtype=np.float32)
  angles = np.arange(length, dtype=np.float32)[:, None] * freqs[None, :]
  return np.cos(angles), np.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates adjacent feature pairs (2i, 2i+1) of x (B, L, N, H) by position, in float32."""
  x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  x0, x1 = x32[..., 0], x32[..., 1]
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([c * x0 - s * x1, s * x0 + c * x1], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


class HeadsDense(nn.Module):
  """Dense D -> (N, H): kernel (D, N, H) named ('embed', 'heads', 'kv'), bias (N, H).

  A plain 3-D parameter (not nn.DenseGeneral, whose boxed initializer reshapes a 2-D draw and
  so cannot run under active logical-axis constraints).
  """
  num_heads: int
  head_dim: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., D) -> (..., N, H)."""
    shape = (x.shape[-1], self.num_heads, self.head_dim)
    init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    kernel = self.param('kernel', layers.named_init(init, ('embed', 'heads', 'kv')), shape,
                        jnp.float32)
    y = jnp.einsum('...d,dnh->...nh', x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param('bias', layers.named_init(nn.initializers.zeros_init(), ('heads', 'kv')),
                        shape[1:], jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class BlockFields(nn.Module):
  """The fields of one trunk block, shared by `MMDiTBlock`, `LayerStack` and `MMDiT` (which
  documents them). Subclasses add theirs after these, so construct them by keyword."""
  embed_dim: int = 1536
  num_heads: int = 64
  head_dim: int = 24
  mlp_hidden: int = 4096
  kernel_size: int = 3
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None
  winograd: bool = False


class StackFields(BlockFields):
  """`BlockFields` and how the blocks are stacked, shared by `LayerStack` and `MMDiT`."""
  depth: int = 24
  scan_layers: bool = True
  remat_policy: str = 'none'
  scan_unroll: int = 1


def _fields_of(module: nn.Module, base: type[nn.Module]) -> dict:
  """module's values of the fields `base` declares, as keyword arguments."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(base)
          if f.name not in ('parent', 'name')}


class MMDiTBlock(BlockFields):
  """One trunk block (official `MMDitSingleBlock` with the time context), scan-compatible.

  Attributes:
    emit: also return the block's output hidden state as the scan output (for read-outs).
  """
  emit: bool = False

  @nn.compact
  def __call__(self, h, cond_act, rope, temb):
    """h: (B, L, D); cond_act: SiLU of modulation tokens (B, L, D); rope: (cos, sin) each
    (L, H/2); temb: (B, D). Returns (h', h' or None), h' (B, L, D)."""
    d, n, hd, dt = self.embed_dim, self.num_heads, self.head_dim, self.dtype
    mod = layers.dense(6 * d, ('embed', 'mlp'), dtype=dt, name='adaLN')(cond_act)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)

    y = layers.layer_norm(use_affine=False, eps=1e-5, dtype=dt, name='norm1')(h)
    y = y * (1 + scale1) + shift1
    q, k, v = (HeadsDense(n, hd, True, dt, name=name)(y) for name in ('q', 'k', 'v'))
    cos, sin = rope
    q = apply_rope(layers.rms_normalize(q, 1e-6), cos, sin)
    k = apply_rope(layers.rms_normalize(k, 1e-6), cos, sin)
    q, k, v = (checkpoint_name(layers.constrain(a, ACT_HEADS), name)
               for a, name in ((q, 'query'), (k, 'key'), (v, 'value')))
    a = checkpoint_name(layers.attention(q, k, v, implementation=self.attention_impl),
                        'attention')
    a = a.reshape(*a.shape[:2], n * hd)
    a = layers.SameConv1d(d, self.kernel_size, ('heads', 'embed'), winograd=self.winograd,
                          dtype=dt, name='attn_out')(a)
    h = h + a * gate1

    # The degenerate single-key time attention: its output is the normalised value row.
    tv = layers.rms_normalize(HeadsDense(n, hd, False, dt, name='time_value')(temb), 1e-6)
    h = h + tv.reshape(tv.shape[0], 1, n * hd)

    y = layers.layer_norm(use_affine=False, eps=1e-5, dtype=dt, name='norm2')(h)
    y = y * (1 + scale2) + shift2
    conv = lambda f, axes, name: layers.SameConv1d(f, self.kernel_size, axes, use_bias=False,
                                                   winograd=self.winograd, dtype=dt, name=name)
    u = nn.silu(conv(self.mlp_hidden, ('embed', 'mlp'), 'ffn_w1')(y)) * conv(
        self.mlp_hidden, ('embed', 'mlp'), 'ffn_w3')(y)
    u = checkpoint_name(layers.constrain(u, ('act_batch', 'act_length', 'act_mlp')),
                        'ffn_hidden')
    h = h + conv(d, ('mlp', 'embed'), 'ffn_w2')(u) * gate2
    h = layers.constrain(h, ACT)
    return h, (h if self.emit else None)


class LayerStack(StackFields):
  """The first `num_blocks` of `depth` blocks, scanned (params stacked on axis 'layers') or not.

  With `num_blocks < depth` the scanned parameters are sliced to [:num_blocks] on the way in,
  so early read-outs never run (or differentiate through) the later blocks.
  """

  @nn.compact
  def __call__(self, h, cond_act, rope, temb, *, num_blocks: int, emit: bool):
    """Arguments as `MMDiTBlock`. Returns (h after block num_blocks, (num_blocks, B, L, D)
    stack of every block's output if `emit` else None)."""
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'unknown remat_policy {self.remat_policy!r}; '
                       f'choose from {sorted(REMAT_POLICIES)}')
    cls = MMDiTBlock
    if self.remat_policy != 'none':
      cls = nn.remat(cls, policy=REMAT_POLICIES[self.remat_policy],
                     prevent_cse=not self.scan_layers)
    fields = _fields_of(self, BlockFields)
    if not self.scan_layers:
      outs = []
      for i in range(num_blocks):
        h, y = cls(**fields, emit=emit, name=f'block_{i}')(h, cond_act, rope, temb)
        outs.append(y)
      return h, (jnp.stack(outs) if emit else None)

    scanned = nn.scan(cls, variable_axes={'params': 0}, split_rngs={'params': True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=num_blocks,
                      unroll=min(self.scan_unroll, num_blocks),
                      metadata_params={nn.PARTITION_NAME: 'layers'})
    if num_blocks < self.depth:
      if self.is_initializing():
        raise ValueError('initialise MMDiT with the full forward, not a truncated read-out')
      scanned = nn.map_variables(
          scanned, 'params', mutable=False,
          trans_in_fn=lambda vs: jax.tree.map(lambda a: a[:num_blocks], vs))
    return scanned(**fields, emit=emit, name='block')(h, cond_act, rope, temb)


def unstack_blocks(trunk_params: dict) -> dict:
  """The scanned trunk tree ('layers'/'block', every leaf (depth, ...)) as the tree of the same
  trunk with `scan_layers=False` ('layers'/'block_0' ... 'block_{depth-1}'); a tree already
  in that form comes back unchanged. Leaves may be numpy or jax arrays.

  Inference runs the unscanned trunk on this tree (`audiox.inference_params`): each block's
  weights are arrays of their own, so the compiled sampler neither copies a block's slice of
  the stack on every call (as an unrolled program over the stacked tree does) nor slices it in
  every iteration of a layer loop (as the scan does). docs/benchmarks.md has the timings.
  """
  stack = trunk_params.get('layers', {})
  if 'block' not in stack:
    return trunk_params
  blocks = stack['block']
  depth = jax.tree.leaves(blocks)[0].shape[0]
  split = {f'block_{i}': jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(depth)}
  rest = {k: v for k, v in stack.items() if k != 'block'}
  return {**trunk_params, 'layers': {**rest, **split}}


# The block's kernel-3 convolutions, whose kernels `winograd_blocks` converts.
CONVS = ('attn_out', 'ffn_w1', 'ffn_w2', 'ffn_w3')


def inference_winograd(kernel_size: int) -> bool:
  """Whether the inference layout runs the blocks' convolutions by Winograd's F(2, 3) (on
  their `winograd_blocks` tree): kernel 3, on the backends `layers.winograd_backend` names."""
  return kernel_size == 3 and layers.winograd_backend()


def winograd_blocks(trunk_params: dict) -> dict:
  """The unscanned trunk tree (`unstack_blocks`) with every block's kernel-3 convolution
  kernels (`CONVS`, (3, in, out)) as their `layers.winograd_filters` (4, in, out): the tree
  of `MMDiT(scan_layers=False, winograd=True)`. Converted once at load, so a sampler does not
  transform the filters on every call; a tree already converted comes back unchanged."""
  stack = trunk_params['layers']
  if 'block' in stack:
    raise ValueError('winograd_blocks needs the unscanned tree: apply unstack_blocks first')
  def convert(block):
    out = dict(block)
    for name in CONVS:
      kernel = block[name]['kernel']
      if kernel.shape[0] == 3:
        out[name] = {**block[name], 'kernel': layers.winograd_filters(kernel)}
    return out
  blocks = {k: convert(v) if k.startswith('block_') else v for k, v in stack.items()}
  return {**trunk_params, 'layers': blocks}


def inference_layout(trunk_params: dict) -> dict:
  """The trunk tree (any layout) for the inference trunk, `MMDiT(scan_layers=False,
  winograd=inference_winograd(kernel_size))`: `unstack_blocks`, then on the Winograd backends
  `winograd_blocks`. Idempotent."""
  trunk = unstack_blocks(trunk_params)
  kernel_size = trunk['layers']['block_0']['attn_out']['kernel'].shape[0]
  return winograd_blocks(trunk) if inference_winograd(kernel_size) else trunk


class MMDiT(StackFields):
  """AudioX-Turbo velocity predictor (official `MMDiffusionTransformer`, prepend mode).

  Attributes:
    io_channels: latent channels (64).
    embed_dim: trunk width D (1536).
    depth: number of blocks (24).
    num_heads, head_dim: N and H with N * H = D (64 and 24 in the released model). From an
      official config (D, num_heads C): N = D // C, H = D // N, i.e. C is the head width.
    cond_dim: width of the (post-fusion) conditioning tokens (768).
    cond_len: number of conditioning tokens (384).
    seq_len: number of latent frames T (236); the trunk sequence is T + 1.
    mlp_hidden: SwiGLU hidden width. Officially int(2 * int(D * mlp_ratio) / 3) rounded up
      to a multiple of 256 (mlp_ratio 4): 4096 at D = 1536, where the rounding changes
      nothing, but 512 (not 320) at D = 120.
    kernel_size: taps of the attention-output and FFN convolutions (3).
    fourier_dim: timestep Fourier features (256: cos then sin of 128 learned frequencies).
    rope_theta: RoPE base.
    dtype: compute dtype (params are float32; Fourier features and RoPE stay float32).
    attention_impl: None (XLA) or 'cudnn'.
    winograd: run the kernel-3 convolutions by Winograd's F(2, 3) on kernels held as their
      `layers.winograd_filters` (the inference layout on CPU: `winograd_blocks` converts a
      tree; the same function in 2/3 of the matmul FLOPs).
    scan_layers: stack the blocks with nn.scan (params under 'layers' with a leading axis).
    remat_policy: a name in REMAT_POLICIES: what each block keeps for the backward pass.
    scan_unroll: blocks per iteration of the scanned loop (`depth` unrolls it fully: no loop
      overhead between blocks, a longer compile; same parameters, same math).
  """
  io_channels: int = 64
  cond_dim: int = 768
  cond_len: int = 384
  seq_len: int = 236
  fourier_dim: int = 256
  rope_theta: float = 10000.0

  def setup(self):
    # Logical names must differ within one parameter (flax rejects repeats), so square maps
    # name one side only; io-sized and sequence-sized axes stay replicated.
    d, io, dt = self.embed_dim, self.io_channels, self.dtype
    if self.num_heads * self.head_dim != d:
      raise ValueError(f'model.trunk.num_heads * model.trunk.head_dim = {self.num_heads} * '
                       f'{self.head_dim} != model.trunk.embed_dim = {d}')
    self.time_freqs = self.param(
        'time_freqs', layers.named_init(nn.initializers.normal(1.0), ('channels',)),
        (self.fourier_dim // 2,), jnp.float32)
    self.time_embed_0 = layers.dense(d, ('channels', 'mlp'), dtype=dt)
    self.time_embed_1 = layers.dense(d, ('mlp', 'embed'), dtype=dt)
    self.preprocess_conv = layers.conv1d(io, 1, ('channels', None), use_bias=False,
                                         dtype=dt, kernel_init=nn.initializers.zeros_init())
    self.project_in = layers.dense(d, ('channels', 'embed'), use_bias=False, dtype=dt)
    self.cond_proj = layers.dense(d, ('channels', 'embed'), dtype=dt)
    self.cond_resample = layers.dense(self.seq_len + 1, ('length', None), dtype=dt)
    self.layers = LayerStack(**_fields_of(self, StackFields))
    self.project_out = layers.dense(io, ('embed', 'channels'), use_bias=False, dtype=dt)
    self.postprocess_conv = layers.conv1d(io, 1, ('channels', None), use_bias=False,
                                          dtype=dt, kernel_init=nn.initializers.zeros_init())

  def _check(self, x, t, cond):
    b = x.shape[0]
    want = {'x': (x, (b, self.seq_len, self.io_channels)), 't': (t, (b,)),
            'cond': (cond, (b, self.cond_len, self.cond_dim))}
    for name, (arr, shape) in want.items():
      if tuple(arr.shape) != shape:
        raise ValueError(f'MMDiT: {name} has shape {tuple(arr.shape)}, expected {shape} '
                         '(channels-last; the trunk length is fixed by seq_len/cond_len)')

  def _time_embedding(self, t):
    """t (B,) float -> (B, D); Fourier features in float32 (bf16 t would be too coarse)."""
    f = (2 * jnp.pi * t.astype(jnp.float32))[:, None] * self.time_freqs[None, :]
    feats = jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)
    return self.time_embed_1(nn.silu(self.time_embed_0(feats)))

  def _trunk(self, x, t, cond, num_blocks: int, emit: bool):
    self._check(x, t, cond)
    dt = self.dtype
    temb = self._time_embedding(t).astype(dt)
    x = x.astype(dt)
    h = self.project_in(x + self.preprocess_conv(x))
    h = layers.constrain(jnp.concatenate([temb[:, None, :], h], axis=1), ACT)
    c = self.cond_proj(cond.astype(dt))
    c = jnp.swapaxes(self.cond_resample(jnp.swapaxes(c, 1, 2)), 1, 2)
    cond_act = layers.constrain(nn.silu(c), ACT)
    cos, sin = rope_tables(self.seq_len + 1, self.head_dim, self.rope_theta)
    return self.layers(h, cond_act, (jnp.asarray(cos), jnp.asarray(sin)), temb,
                       num_blocks=num_blocks, emit=emit)

  def _read_out(self, h):
    """(..., L, D) -> (..., T, io): project_out, drop the time token, + postprocess_conv."""
    out = self.project_out(h)[..., 1:, :]
    return (out + self.postprocess_conv(out)).astype(jnp.float32)

  def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
    """Velocity. x: (B, T, io) noisy latent; t: (B,) in [0, 1] (1 = noise); cond: (B, cond_len,
    cond_dim) post-fusion tokens. Returns v (B, T, io) float32."""
    h, _ = self._trunk(x, t, cond, self.depth, emit=False)
    return self._read_out(h)

  def readouts(self, x: jax.Array, t: jax.Array, cond: jax.Array, num_blocks: int
               ) -> jax.Array:
    """Output read-out after each of blocks 1..num_blocks, in one pass over those blocks only.

    Entry i-1 equals the official forward truncated to `active_num_layers = i` (the GAN
    features of the distillation discriminator). Returns (num_blocks, B, T, io) float32.
    """
    if not 1 <= num_blocks <= self.depth:
      raise ValueError(f'num_blocks must be in [1, {self.depth}], got {num_blocks}')
    _, hs = self._trunk(x, t, cond, num_blocks, emit=True)
    return self._read_out(hs)

"""CLIP ViT vision tower (Hugging Face `CLIPVisionModel` numerics), frozen video encoder.

AudioX-Turbo feeds each video frame through `openai/clip-vit-base-patch32` and takes
`last_hidden_state`: the encoder output *before* `post_layernorm`. So this tower has no
post_layernorm and no projection; checkpoints that contain them are skipped by the loader.
Images are channels-last (B, H, W, 3) and already normalised (`preprocess_frames`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.models.layers import (attention, constrain, dense, layer_norm, named_init,
                                   stack_layers)
from axturbo.models.activations import hf_activation

Dtype = jnp.dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_frames(frames) -> jax.Array:
  """[0, 255]-valued frames (..., H, W, 3), any dtype -> CLIP-normalised float32, same shape.

  As the official conditioner: divide by 255, then subtract the mean and divide by the std
  per channel.
  """
  frames = jnp.asarray(frames)
  if frames.ndim < 3 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be (..., H, W, 3) channels-last, got shape {frames.shape}')
  x = frames.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN: x += out_proj(MHA(LN1 x)); x += fc2(act(fc1(LN2 x))). Returns (x, None) for scan."""
  hidden_size: int
  intermediate_size: int
  num_heads: int
  hidden_act: str = 'quick_gelu'
  eps: float = 1e-5
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, _: None = None) -> tuple[jax.Array, None]:
    b, length, width = x.shape
    head_dim = width // self.num_heads
    h = layer_norm(eps=self.eps, dtype=self.dtype, name='layer_norm1')(x)
    q, k, v = (dense(width, ('embed', 'heads'), dtype=self.dtype, name=f'{n}_proj')(h)
               .reshape(b, length, self.num_heads, head_dim) for n in ('q', 'k', 'v'))
    # jax.nn.dot_product_attention scales by head_dim ** -0.5, as HF scales q.
    out = attention(q, k, v, implementation=self.attention_impl).reshape(b, length, width)
    out = constrain(out, ('act_batch', 'act_length', 'act_heads'))
    x = x + dense(width, ('heads', 'embed'), dtype=self.dtype, name='out_proj')(out)
    h = layer_norm(eps=self.eps, dtype=self.dtype, name='layer_norm2')(x)
    h = dense(self.intermediate_size, ('embed', 'mlp'), dtype=self.dtype, name='fc1')(h)
    h = constrain(hf_activation(self.hidden_act)(h), ('act_batch', 'act_length', 'act_mlp'))
    x = x + dense(width, ('mlp', 'embed'), dtype=self.dtype, name='fc2')(h)
    return constrain(x, ('act_batch', 'act_length', 'act_embed')), None


class CLIPVisionTower(nn.Module):
  """Normalised images (B, H, W, C) -> last_hidden_state (B, 1 + (H/p)^2, hidden_size).

  Fields follow HF `CLIPVisionConfig` (`num_hidden_layers` is `num_layers`,
  `num_attention_heads` is `num_heads`, `layer_norm_eps` is `eps`). Parameters:
  `patch_embedding.kernel` (p, p, C, D) without bias, `class_embedding` (D,),
  `position_embedding` (1 + (image/p)^2, D), `pre_layrnorm`, `layers_{i}` (or stacked `layers`).
  """
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  hidden_act: str = 'quick_gelu'
  eps: float = 1e-5
  scan_layers: bool = False
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32

  @property
  def num_positions(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1

  def _check_inputs(self, images: jax.Array) -> None:
    want = (self.image_size, self.image_size, self.num_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
      raise ValueError(f'images must be (B, {want[0]}, {want[1]}, {want[2]}) channels-last, '
                       f'got shape {images.shape}')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} not divisible by {self.num_heads} heads')

  def _embed(self, images: jax.Array) -> jax.Array:
    p, d = self.patch_size, self.hidden_size
    patches = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', use_bias=False,
                      dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=named_init(nn.initializers.lecun_normal(),
                                             ('conv_height', 'conv_width', 'channels', 'embed')),
                      name='patch_embedding')(images.astype(self.dtype))
    patches = patches.reshape(images.shape[0], -1, d)  # row-major over the patch grid
    cls = self.param('class_embedding', named_init(nn.initializers.normal(0.02), ('embed',)),
                     (d,), jnp.float32)
    pos = self.param('position_embedding',
                     named_init(nn.initializers.normal(0.02), ('length', 'embed')),
                     (self.num_positions, d), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (images.shape[0], 1, d))
    return jnp.concatenate([cls, patches], axis=1) + pos.astype(self.dtype)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images: (B, H, W, C) normalised -> (B, 1 + (H/p)^2, hidden_size), before post-LN."""
    self._check_inputs(images)
    x = layer_norm(eps=self.eps, dtype=self.dtype, name='pre_layrnorm')(self._embed(images))
    x = constrain(x, ('act_batch', 'act_length', 'act_embed'))
    layer_fields = dict(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                        num_heads=self.num_heads, hidden_act=self.hidden_act, eps=self.eps,
                        attention_impl=self.attention_impl, dtype=self.dtype)
    return stack_layers(CLIPEncoderLayer, layer_fields, self.num_layers, scan=self.scan_layers,
                        name='layers', x=x)


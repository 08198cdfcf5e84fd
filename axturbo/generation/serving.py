"""Serving path: text (and video) to waveform with one compiled call per request.

`axturbo.generation.generate.Generator` handles every task and times each stage, blocking on the
device between stages. This module is its fast twin for the conditioning that serving sees most
(text, optionally a video; a silent audio prompt), built for latency:

  * fusion -> sampler (student or teacher) -> latent decode -> crop, one jitted executable;
    the noise is drawn on the device from the seed, so a request is one dispatch of the
    text encoder (skipped for a cached prompt) and one of that executable, and the only
    host round trip is the final copy of the waveform;
  * weights stored in the compute dtype (bfloat16 halves the bytes each trunk call reads);
  * T5 outputs cached per prompt (an LRU of device arrays); the silent audio prompt's tokens
    are computed once; an absent video uses the learned empty-video tokens (no CLIP pass);
  * the attention implementation (None = XLA's choice; 'cudnn' = the cuDNN flash kernel) and
    the decoder's compute dtype are options.

With dtype float32, decode_dtype float32 and the same seed, the result equals Generator's
(same noise draws, same networks); tests/test_serving.py checks it.
"""
import collections
import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from axturbo.data import tokenizers
from axturbo.generation import sampling
from axturbo.generation.request import as_requests
from axturbo.generation.request import is_path
from axturbo.generation.request import Request
from axturbo.generation.request import SamplerOptions
from axturbo.models import audiox
from axturbo.models import codec as codec_lib

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# Subtrees stored in the compute dtype; 'vae' follows decode_dtype; the rest stays float32.
_COMPUTE_SUBTREES = ('text', 'clip', 'video', 'maf', 'trunk')


def draw_noise(seeds: jax.Array, shape: tuple[int, int], renoises: int
               ) -> tuple[jax.Array, jax.Array]:
  """Per-prompt seeds (B,) -> initial noise (B, T, C) and re-noise (renoises, B, T, C).

  The draws of `Generator.generate` (key = PRNGKey(seed + i) for prompt i), made on device.
  """
  def one(seed):
    k_init, k_re = jax.random.split(jax.random.PRNGKey(seed))
    return (jax.random.normal(k_init, shape, jnp.float32),
            jax.random.normal(k_re, (renoises,) + shape, jnp.float32))
  noise, renoise = jax.vmap(one)(seeds)
  return noise, jnp.swapaxes(renoise, 0, 1)


def cast_params(params: Any, dtype, decode_dtype) -> dict:
  """Conditioners, MAF and trunk in `dtype`, the codec in `decode_dtype`, the rest float32."""
  out = {}
  for name, tree in params.items():
    to = dtype if name in _COMPUTE_SUBTREES else decode_dtype if name == 'vae' else None
    out[name] = tree if to is None else jax.tree.map(lambda x, to=to: x.astype(to), tree)
  return out


class Pipeline:
  """Holds the cast weights, the compiled stages and the prompt cache. Not thread-safe.

  Args:
    model_config: a `config.model` section.
    params: unboxed parameter tree (any float dtype; cast here, on device, once).
    dtype: compute dtype of the conditioners, MAF and trunk.
    weights_dtype: their storage dtype (default: `dtype`; 'float32' keeps master weights and
      casts them in every call, as `Generator` does).
    decode_dtype: compute and storage dtype of the latent decoder.
    attention_impl: None (XLA) or 'cudnn'; overrides `model_config.attention_impl`.
    unroll_layers: the inference layout (default): the trunk without its layer scan, each
      block's weights separate arrays (`audiox.build_model(..., inference=True)`,
      `audiox.inference_params`); False keeps the config's layout (the training scan), for
      comparison.
    matmul_precision: e.g. 'highest' for strict float32 matmuls (no TF32), as the official
      float32 inference; None keeps JAX's default.
    tokenizer: defaults to the config's own (`tokenizers.build_tokenizer`); pass one for
      'hf' configs (their vocabulary lives in a checkpoint folder).
    cache_size: prompts whose T5 tokens are kept on device (0 disables the cache).

  Abstract parameters (a tree of jax.ShapeDtypeStruct, e.g. from jax.eval_shape) build a
  pipeline that cannot generate but can lower its stages for shapes only (`lower_*`): the
  ahead-of-time costs of the serving executables at any size, nothing materialised.
  """

  def __init__(self, model_config: mlc.ConfigDict, params: Any, *, dtype: str = 'bfloat16',
               weights_dtype: str | None = None, decode_dtype: str = 'float32',
               attention_impl: str | None = None, unroll_layers: bool = True,
               matmul_precision: str | None = None, tokenizer=None, cache_size: int = 256):
    m = mlc.ConfigDict(model_config.to_dict())
    m.dtype = dtype
    m.attention_impl = attention_impl or ''
    self.config = m
    self.model = audiox.build_model(m, inference=unroll_layers)
    self.decoder = codec_lib.build_codec(m, dtype=_DTYPES[decode_dtype])
    self.matmul_precision = matmul_precision
    params = nn.unbox(params)
    self.abstract = all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    run = jax.eval_shape if self.abstract else (lambda f, *a: f(*a))
    layout = audiox.inference_params if unroll_layers else (lambda p: p)
    self.params = run(jax.jit(lambda p, to, decode_to: layout(cast_params(p, to, decode_to)),
                              static_argnums=(1, 2)),
                      params, _DTYPES[weights_dtype or dtype], _DTYPES[decode_dtype])
    if tokenizer is None:
      if m.text.tokenizer == 'hf':
        raise ValueError("pass a tokenizer: model.text.tokenizer 'hf' reads a local folder")
      tokenizer = tokenizers.build_tokenizer(m.text)
    self.tokenizer = tokenizer
    self.cache_size = cache_size
    self._cache: collections.OrderedDict[str, jax.Array] = collections.OrderedDict()
    self.latent_shape = (m.trunk.seq_len, m.trunk.io_channels)
    hop = codec_lib.hop_length(m)
    self.output_samples = min(m.prompt_samples, m.trunk.seq_len * hop)
    apply = self.model.apply
    with self._precision():
      # The silent prompt's tokens (posterior mean), once, in float32 as Generator computes them.
      zeros = jax.ShapeDtypeStruct((1, m.prompt_samples, 2), jnp.float32)
      if not self.abstract:
        zeros = jnp.zeros(zeros.shape, zeros.dtype)
      self.silent_tokens = run(
          jax.jit(lambda p, a: apply({'params': p}, a, deterministic=True,
                                     method='encode_audio_prompt').astype(dtype)),
          {'audio_prompt': params['audio_prompt']}, zeros)
    # Each stage gets only the subtrees it reads (fewer leaves to hand over per call).
    self._text = jax.jit(lambda p, ids, mask: apply({'params': p}, ids, mask,
                                                    method='encode_text'))
    # Frames travel in their own dtype (uint8: 4x fewer bytes) and are converted on device.
    self._video = jax.jit(lambda p, frames, sync: apply(
        {'params': p}, frames.astype(jnp.float32), sync, method='encode_video'))
    self._generate = jax.jit(self._generate_fn,
                             static_argnames=('sampler', 'steps', 'cfg_scale'))

  def _precision(self):
    if self.matmul_precision is None:
      return contextlib.nullcontext()
    return jax.default_matmul_precision(self.matmul_precision)

  # ---------------------------------------------------------------------------- compiled

  def _part(self, *names: str) -> dict:
    return {k: self.params[k] for k in names if k in self.params}

  def _generate_params(self) -> dict:
    params = self._part('maf', 'trunk', 'vae')
    params['video'] = {'empty_visual_feat': self.params['video']['empty_visual_feat']}
    return params

  def _generate_fn(self, params, text_tokens, video_tokens, silent_tokens, seed, *,
                   sampler: str, steps: int, cfg_scale: float):
    """(B, Lt, D) text tokens, (B, Lv, D) video tokens or None, (1, La, D) silent-prompt
    tokens, int seed -> (waveform (B, output_samples, C) float32, latents (B, T, C) float32)."""
    b = text_tokens.shape[0]
    if video_tokens is None:
      empty = params['video']['empty_visual_feat']
      video_tokens = jnp.broadcast_to(empty[None], (b,) + empty.shape)
    audio_tokens = jnp.broadcast_to(silent_tokens, (b,) + silent_tokens.shape[1:])
    apply = self.model.apply
    cond = apply({'params': params}, text_tokens, video_tokens.astype(text_tokens.dtype),
                 audio_tokens.astype(text_tokens.dtype), method='fuse')
    seeds = seed + jnp.arange(b, dtype=jnp.int32)
    if sampler == 'student':
      noise, renoise = draw_noise(seeds, self.latent_shape, steps - 1)
      vf = lambda z, t: apply({'params': params}, z, t, cond, method='velocity')
      z = sampling.sample_student(vf, noise, renoise, steps, shift=self.config.time_shift)
    else:
      noise, _ = draw_noise(seeds, self.latent_shape, 0)
      vf = lambda z, t, c: apply({'params': params}, z, t, c, method='velocity')
      z = sampling.sample_euler(vf, noise, cond, steps, cfg_scale, shift=self.config.time_shift)
    wave = self.decoder.apply({'params': params.get('vae', {})}, z, method='decode')
    return wave[:, :self.output_samples].astype(jnp.float32), z

  # ---------------------------------------------------------------------------- stages

  def text_tokens(self, texts: Sequence[str]) -> jax.Array:
    """(B, Lt, D) T5 tokens; prompts seen before come from the cache (no encoder call)."""
    missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
    if missing:
      tok = self.tokenizer(missing)
      with self._precision():
        rows = self._text(self._part('text'), jnp.asarray(tok.input_ids),
                          jnp.asarray(tok.attention_mask))
      if not self.cache_size:
        fresh = {t: rows[i:i + 1] for i, t in enumerate(missing)}
        return jnp.concatenate([fresh[t] for t in texts]) if len(texts) > 1 else fresh[texts[0]]
      for i, t in enumerate(missing):
        self._cache[t] = rows[i:i + 1]
    for t in texts:
      self._cache.move_to_end(t)
    out = [self._cache[t] for t in texts]
    while len(self._cache) > self.cache_size:
      self._cache.popitem(last=False)
    return out[0] if len(out) == 1 else jnp.concatenate(out)

  def video_tokens(self, frames, sync=None) -> jax.Array:
    """Frames (B, F, H, W, 3) in [0, 255] (+ sync (B, S, Ds), default zeros) -> (B, Lv, D)."""
    v = self.config.video
    frames = jnp.asarray(frames)
    if sync is None:
      sync = jnp.zeros((frames.shape[0], v.sync_len, v.sync_dim), jnp.float32)
    with self._precision():
      return self._video(self._part('clip', 'video'), frames, jnp.asarray(sync, jnp.float32))

  def generate_arrays(self, texts: str | Sequence[str], *, video_tokens=None,
                      options: SamplerOptions | None = None) -> tuple[jax.Array, jax.Array]:
    """Device arrays (waveform (B, N, C), latents (B, T, C)); nothing waits for the device.
    `options`: sampler, steps, cfg_scale, seed (default: the student, 4 steps, seed 0)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    opts = (options or SamplerOptions()).resolved('student')
    text = self.text_tokens(texts)
    with self._precision():
      return self._generate(self._generate_params(), text, video_tokens, self.silent_tokens,
                            jnp.int32(opts.seed), sampler=opts.sampler,
                            steps=opts.steps, cfg_scale=opts.cfg_scale)

  def __call__(self, requests: Request | Sequence[Request],
               options: SamplerOptions | None = None) -> np.ndarray:
    """Waveforms (B, output_samples, C) float32 on the host, not normalised.

    requests: text, optionally a video as (F, H, W, 3) frames in [0, 255] at the model's size
    (every request or none) and its sync features (S, Ds) (default zeros); the other tasks are
    `Generator.generate`'s. Request i uses seed + i, as `Generator.generate`.
    """
    requests = as_requests(requests)
    for i, r in enumerate(requests):
      for name in ('audio', 'image', 'duration_s'):
        if getattr(r, name) is not None:
          raise ValueError(f'prompt {i}: the serving path takes text and video only, not '
                           f'{name}; use Generator.generate')
      if is_path(r.video) or is_path(r.sync):
        raise ValueError(f'prompt {i}: the serving path takes video frames and sync features '
                         'as arrays, not files; use Generator.generate')
    has_video = [r.video is not None for r in requests]
    if any(has_video) and not all(has_video):
      raise ValueError('the serving path takes a video for every request or for none, got '
                       f'{sum(has_video)} of {len(requests)}')
    video_tokens = None
    if all(has_video):
      syncs = [r.sync for r in requests]
      sync = (None if all(x is None for x in syncs) else np.stack(
          [np.zeros((self.config.video.sync_len, self.config.video.sync_dim), np.float32)
           if x is None else np.asarray(x, np.float32) for x in syncs]))
      video_tokens = self.video_tokens(np.stack([np.asarray(r.video) for r in requests]), sync)
    wave, _ = self.generate_arrays([r.text for r in requests], video_tokens=video_tokens,
                                   options=options)
    return np.asarray(wave)

  # ---------------------------------------------------------------------------- AOT

  def lower_generate(self, batch: int, *, sampler: str = 'student', steps: int = 4,
                     cfg_scale: float = 1.0, video: bool = False):
    """The fused executable for `batch` requests, lowered for shapes only."""
    m, sds = self.config, jax.ShapeDtypeStruct
    dt = _DTYPES[m.dtype]
    text = sds((batch, m.text.max_length, m.cond_dim), dt)
    video_tokens = sds((batch, m.video.out_tokens, m.cond_dim), dt) if video else None
    with self._precision():
      return self._generate.lower(self._generate_params(), text, video_tokens,
                                  self.silent_tokens, sds((), jnp.int32), sampler=sampler,
                                  steps=steps, cfg_scale=cfg_scale)

  def lower_text(self, batch: int):
    ids = jax.ShapeDtypeStruct((batch, self.config.text.max_length), jnp.int32)
    with self._precision():
      return self._text.lower(self._part('text'), ids, ids)

  def lower_video(self, batch: int):
    v, c = self.config.video, self.config.clip
    frames = jax.ShapeDtypeStruct((batch, v.num_frames, c.image_size, c.image_size, 3), jnp.uint8)
    sync = jax.ShapeDtypeStruct((batch, v.sync_len, v.sync_dim), jnp.float32)
    with self._precision():
      return self._video.lower(self._part('clip', 'video'), frames, sync)

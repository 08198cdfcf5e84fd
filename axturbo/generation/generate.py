"""Generation API: `Generator.load(checkpoint_dir).generate(requests, options)`.

    from axturbo.generation import Generator, Request, SamplerOptions
    gen = Generator.load('ckpt/')
    [clip] = gen.generate(Request(text='Thunder rolls, then rain.'), SamplerOptions(seed=0))

The values (`Request`, `SamplerOptions`, `InputOptions`, `LongOptions`) are defined and checked
in `axturbo.generation.request`. One call generates a batch of requests of one model window
each: conditioning (text, video, audio prompt, fusion), a sampler
(`axturbo.generation.sampling`) and the VAE decoder, each stage a jitted function compiled once
per input shape. Results carry the waveform at `model.sample_rate`, the latents and a metadata
dict. Clips of any length are a planner over this call (`axturbo.generation.longform`).

Tasks (docs/official.md, "Inputs and tasks"): whatever is missing takes the official default —
text "", an all-zero video (-> the learned `empty_visual_feat`), zero sync features, a silent
audio prompt. Work whose result is known is skipped: no CLIP pass when no prompt has a video
(the tokens are `empty_visual_feat` broadcast), and the silent-prompt tokens are computed once.

Differences from the official pipeline, all deliberate and switchable (`InputOptions`):
  * The audio prompt uses the VAE posterior MEAN (deterministic); the official conditioner
    samples the posterior even for silence. `sample_prompt_posterior=True` samples it.
  * Inpainting is, officially, only "zero the span in the audio prompt".
    `Request.keep_unmasked=True` additionally pins the latent frames outside the span to the
    VAE latents (posterior mean) of the given audio throughout sampling, so they come out
    exactly preserved (frames that overlap the span's edges are regenerated). For
    continuation it pins the frames covered by the given audio, placed at the start of the
    output.
  * An empty text prompt is accepted when a video, image or audio conditions the output (the
    official default for missing text is ""); with no condition at all it is refused unless
    `allow_unconditional=True`.
"""
import dataclasses
import time
from typing import Any, Sequence

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from axturbo import flow
from axturbo.data import tokenizers
from axturbo.generation import inputs
from axturbo.generation import media
from axturbo.generation import sampling
from axturbo.generation.request import as_requests
from axturbo.generation.request import InputOptions
from axturbo.generation.request import Request
from axturbo.generation.request import SamplerOptions
from axturbo.generation import sync as sync_lib
from axturbo.models import audiox
from axturbo.runtime import checkpoints
from axturbo.runtime import lora as lora_lib

KINDS = ('student', 'teacher')
_PROMPT_RNG_TAG = 0x5EED


@dataclasses.dataclass
class Result:
  """waveform (N, 2) float32 at `sample_rate`, not normalized; latents (T, C) float32."""
  waveform: np.ndarray
  sample_rate: int
  latents: np.ndarray
  meta: dict


class Generator:
  """Holds a model, its parameters and the jitted stages. Thread-unsafe (caches)."""

  def __init__(self, model_config: mlc.ConfigDict, params: Any, *, kind: str = 'student',
               tokenizer=None, meta: dict | None = None, source: str = 'in-memory parameters'):
    if kind not in KINDS:
      raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
    self.config = model_config
    self.model = audiox.build_model(model_config, inference=True)
    self.params = _inference_params(params)
    self.kind, self.source = kind, source
    self.meta = dict(meta or {})
    self.tokenizer = (tokenizer if tokenizer is not None
                      else tokenizers.build_tokenizer(model_config.text))
    self._silent_tokens = None
    self._seen_shapes = set()
    apply = self.model.apply

    def method(name, **fixed):
      return lambda p, *a, **k: apply({'params': p}, *a, method=name, **fixed, **k)

    self._text = jax.jit(method('encode_text'))
    self._video = jax.jit(method('encode_video'))
    self._prompt = jax.jit(method('encode_audio_prompt'), static_argnames=('deterministic',))
    self._fuse = jax.jit(method('fuse'))
    self._decode = jax.jit(method('decode_latents'))
    self._encode = jax.jit(method('encode_latents', deterministic=True))
    self._student = jax.jit(self._student_fn, static_argnames=('steps',))
    self._teacher = jax.jit(self._teacher_fn, static_argnames=('steps', 'cfg_scale'))
    self._noises = jax.jit(_noises, static_argnames=('shape', 'renoises'))
    # A converted checkpoint may carry the official Synchformer: sync features from raw video.
    self.extractor = (sync_lib.SyncExtractor(model_config.get('synchformer'),
                                             self.params['synchformer'], source)
                      if 'synchformer' in self.params else None)
    m = model_config
    self.latent_shape = (m.trunk.seq_len, m.trunk.io_channels)
    decoded = jax.eval_shape(self._decode, self.params,
                             jax.ShapeDtypeStruct((1,) + self.latent_shape, jnp.float32))
    self.hop = decoded.shape[1] // m.trunk.seq_len
    # The official output is cropped to the prompt window (10 s of an 11 s generation).
    self.output_samples = min(m.prompt_samples, decoded.shape[1])
    self.layout = inputs.Layout(m, self.output_samples, m.trunk.seq_len, self.hop)

  # ------------------------------------------------------------------------------ loading

  @classmethod
  def load(cls, checkpoint_dir, *, kind: str | None = None, lora: str | None = None
           ) -> 'Generator':
    """A checkpoint written by `axturbo.runtime.checkpoints.save_params`.

    `lora`: an adapter file (<workdir>/adapter of `train.py` with `train.lora` or of
    `distill.py` with `distill.lora`) merged into the checkpoint's kernels at load time; it
    must have been trained on this checkpoint.

    `kind` ('student' or 'teacher') must agree with meta.json's 'kind' when both are given
    (a teacher is not silently run as a student); a checkpoint with no recorded kind is taken
    as `kind`, else as a student (the released model), with a warning. Parameters are checked
    once for shapes and for non-finite values.
    """
    checkpoint_dir = epath.Path(checkpoint_dir)   # a local path or a URL (gs://...)
    checkpoints.recover_swap(checkpoint_dir)
    m = checkpoints.load_model_config(checkpoint_dir)
    meta = checkpoints.load_meta(checkpoint_dir)
    recorded = meta.get('kind')
    if recorded == lora_lib.KIND:
      raise ValueError(f'{checkpoint_dir}: a LoRA adapter, not a model checkpoint; load its base '
                       'checkpoint with lora= (sample.py --lora)')
    if recorded not in (None, *KINDS):
      raise ValueError(f'{checkpoint_dir / checkpoints.META_FILE}: kind must be one of {KINDS}, '
                       f'got {recorded!r}')
    if kind and recorded and kind != recorded:
      raise ValueError(f'{checkpoint_dir}: is a {recorded} checkpoint (meta.json), not a {kind}')
    if not (kind or recorded):
      logging.warning('%s: meta.json records no kind; taking it as a student', checkpoint_dir)
    kind = kind or recorded or 'student'
    params = checkpoints.load_params(checkpoint_dir)
    params = params.get('params', params) if isinstance(params, dict) else params
    _check_params(params, m, checkpoint_dir)
    if lora:
      params = lora_lib.apply_adapter_file(params, lora, checkpoint_dir)
      meta = {**meta, 'lora': str(lora)}
    bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(params)
           if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
      raise ValueError(f'{checkpoint_dir}: non-finite parameter values in {", ".join(bad[:3])}'
                       f'{f" and {len(bad) - 3} more" if len(bad) > 3 else ""}; the checkpoint '
                       'is damaged')
    return cls(m, params, kind=kind, meta=meta, source=str(checkpoint_dir),
               tokenizer=tokenizers.build_tokenizer(m.text, checkpoint_dir))

  def replace_params(self, params: Any) -> None:
    """New weights of the same tree (in-training evaluation): the compiled programs take the
    parameters as an argument and stay; what was computed from the old weights is dropped."""
    new = _inference_params(params)
    if jax.tree.structure(new) != jax.tree.structure(self.params):
      raise ValueError(f'{self.source}: replace_params needs the same parameter tree')
    self.params, self._silent_tokens = new, None

  # ------------------------------------------------------------------------------ stages

  def sync_features(self, video_path: str) -> np.ndarray:
    """(sync_len, sync_dim) Synchformer features of a video file, read at 25 fps over the
    clip's duration, as the official inference path does."""
    if self.extractor is None:
      raise ValueError(f'{self.source}: no Synchformer in this checkpoint (convert with '
                       '--synchformer)')
    m = self.config
    seconds = m.video.num_frames / m.video_fps
    self.extractor.check_size(seconds, m.video.sync_len, m.video.sync_dim)
    # A single frame (a still saved as a video) has no motion to sync to; a short or low-fps
    # video is padded with its last frame, as the official reader does.
    frames = media.read_video(video_path, self.extractor.fps,
                              self.extractor.frames_for(seconds), self.extractor.image_size,
                              min_frames=2)
    return self.extractor(frames[None])[0]

  def _student_fn(self, params, cond, noise, renoise, known, known_mask, *, steps):
    vf = lambda z, t: self.model.apply({'params': params}, z, t, cond, method='velocity')
    return sampling.sample_student(vf, noise, renoise, steps, shift=self.config.time_shift,
                                   known=known, known_mask=known_mask)

  def _teacher_fn(self, params, cond, noise, known, known_mask, *, steps, cfg_scale):
    vf = lambda z, t, c: self.model.apply({'params': params}, z, t, c, method='velocity')
    return sampling.sample_euler(vf, noise, cond, steps, cfg_scale, shift=self.config.time_shift,
                                 known=known, known_mask=known_mask)

  def silent_prompt_tokens(self) -> jax.Array:
    """(1, La, D) tokens of an all-zero prompt (posterior mean), computed once."""
    if self._silent_tokens is None:
      zeros = jnp.zeros((1, self.config.prompt_samples, 2), jnp.float32)
      self._silent_tokens = self._prompt(self.params, zeros, rng=jax.random.PRNGKey(0),
                                         deterministic=True)
    return self._silent_tokens

  def empty_video_tokens(self, batch: int) -> jax.Array:
    """(B, Lv, D): what the video conditioner returns for an all-empty batch (no CLIP pass)."""
    empty = self.params['video']['empty_visual_feat']
    return jnp.broadcast_to(empty[None], (batch,) + empty.shape)

  # ------------------------------------------------------------------------------ inputs

  def decode(self, latents) -> np.ndarray:
    """Latents (B, T', C) of any length T' -> waveforms (B, T' * hop, 2) float32: the codecs
    decode frame-wise or convolutionally, so a long clip's latents decode in one pass."""
    return np.asarray(self._decode(self.params, jnp.asarray(latents, jnp.float32)), np.float32)

  def encode(self, audio) -> np.ndarray:
    """Stereo waveform (N, 2) or (B, N, 2), N = `config.audio_samples`, at the model rate ->
    codec latents (B, T, C) (`Result.latents` holds one clip's (T, C))."""
    audio = np.asarray(audio, np.float32)
    audio = audio[None] if audio.ndim == 2 else audio
    if audio.ndim != 3 or audio.shape[1:] != (self.config.audio_samples, 2):
      raise ValueError(f'audio must be (N, 2) or (B, N, 2) with N = {self.config.audio_samples}'
                       f', got {audio.shape}')
    return np.asarray(self._encode(self.params, jnp.asarray(audio)))

  def _known_latents(self, items: list[inputs.Item]):
    """(known (B, T, C), mask (B, T, 1)) for keep_unmasked, or (None, None)."""
    if all(it.known_samples is None for it in items):
      return None, None
    t, c = self.latent_shape
    audio = np.stack([it.known_audio if it.known_audio is not None
                      else np.zeros((self.config.audio_samples, 2), np.float32) for it in items])
    known = self._encode(self.params, jnp.asarray(audio))
    masks = []
    for it in items:
      if it.known_samples is None:
        masks.append(np.zeros(t, bool))
      else:  # a frame is kept only if every sample it covers is known
        masks.append(it.known_samples[:t * self.hop].reshape(t, self.hop).all(axis=1))
    return known, jnp.asarray(np.stack(masks)[..., None])

  # ------------------------------------------------------------------------------ generate

  def resolve(self, options: SamplerOptions | None = None) -> SamplerOptions:
    """`options` with the defaults of the checkpoint kind filled in (sampler, steps, cfg)."""
    return (options or SamplerOptions()).resolved(self.kind)

  def generate(self, requests: Request | Sequence[Request],
               options: SamplerOptions | None = None, *, inputs: InputOptions | None = None,
               known_latents=None) -> list[Result]:
    """Generates one clip of one model window per request.

    Args:
      requests: a `Request` or a list of B (`axturbo.generation.request`); none may carry a
        duration_s (long clips: `longform.generate_long`).
      options: sampler, steps, cfg_scale and seed (default: the checkpoint kind's sampler);
        request i uses seed + i, so it can be reproduced alone.
      inputs: how conditions are read (official quirks, no_sync, allow_unconditional).
      known_latents: (known (B, T, C), mask (B, T) bool): latent frames to pin, instead of
        those keep_unmasked encodes from the audio (the long-clip planner pins the previous
        window's own latents).

    Returns:
      B `Result`s, in request order.
    """
    t_start = time.perf_counter()
    requests = as_requests(requests)
    opts = self.resolve(options)
    inputs_opts = inputs or InputOptions()
    items = self._prepare(requests, inputs_opts)
    t_inputs = time.perf_counter()
    cond = jax.block_until_ready(self._condition(items, opts, inputs_opts))
    t_cond = time.perf_counter()
    z, known = self._sample(cond, items, opts, known_latents)
    t_sample = time.perf_counter()
    waves = np.asarray(self._decode(self.params, z))[:, :self.output_samples].astype(np.float32)
    t_end = time.perf_counter()
    z = np.asarray(z)
    self._check_finite(waves, z, opts)
    latency = {'inputs_s': t_inputs - t_start, 'conditioning_s': t_cond - t_inputs,
               'sampling_s': t_sample - t_cond, 'decoding_s': t_end - t_sample,
               'total_s': t_end - t_start}
    metas = self._metas(items, opts, inputs_opts, latency=latency, pinned=known is not None)
    return [Result(waves[i], self.config.sample_rate, z[i], meta)
            for i, meta in enumerate(metas)]

  def _prepare(self, requests: list[Request], options: InputOptions) -> list[inputs.Item]:
    """Loads every request's inputs; refuses unconditional ones unless allowed."""
    items = [inputs.prepare_item(r, layout=self.layout, options=options, where=f'prompt {i}',
                                 extract_sync=self.sync_features if self.extractor else None)
             for i, r in enumerate(requests)]
    for i, it in enumerate(items):
      if it.record.get('unconditional') and not options.allow_unconditional:
        raise ValueError(f'prompt {i}: empty text and no video, image or audio; give a condition '
                         'or allow unconditional generation (allow_unconditional=True)')
    return items

  def _condition(self, items: list[inputs.Item], opts: SamplerOptions,
                 options: InputOptions) -> jax.Array:
    """The fused conditioning tokens (B, L, D) of the batch."""
    p, n = self.params, len(items)
    texts = [it.text for it in items]
    unknown = getattr(self.tokenizer, 'unknown', lambda _: [])(texts)
    if unknown:  # a closed-vocabulary encoder reads these as one UNK token each
      logging.warning('words outside the text encoder vocabulary (read as unknown): %s',
                      ', '.join(unknown))
    limit = self.tokenizer.max_length
    for i, length in enumerate(self.tokenizer.lengths(texts)):
      if length > limit:
        logging.warning('prompt %d is %d tokens long; the text encoder reads the first %d '
                        '(model.text.max_length)', i, length, limit)
    tok = self.tokenizer(texts)
    text_tokens = self._text(p, jnp.asarray(tok.input_ids), jnp.asarray(tok.attention_mask))
    if any(it.frames is not None for it in items):
      f, s = self.config.video.num_frames, self.config.clip.image_size
      frames = np.stack([np.zeros((f, s, s, 3), np.float32) if it.frames is None
                         else it.frames.astype(np.float32) for it in items])
      video_tokens = self._video(p, jnp.asarray(frames),
                                 jnp.asarray(np.stack([it.sync for it in items])))
    else:
      video_tokens = self.empty_video_tokens(n).astype(text_tokens.dtype)
    if any(it.prompt is not None for it in items) or options.sample_prompt_posterior:
      prompts = np.stack([np.zeros((self.config.prompt_samples, 2), np.float32)
                          if it.prompt is None else it.prompt for it in items])
      rng = jax.random.fold_in(jax.random.PRNGKey(opts.seed), _PROMPT_RNG_TAG)
      audio_tokens = self._prompt(p, jnp.asarray(prompts), rng=rng,
                                  deterministic=not options.sample_prompt_posterior)
    else:
      silent = self.silent_prompt_tokens()
      audio_tokens = jnp.broadcast_to(silent, (n,) + silent.shape[1:])
    return self._fuse(p, text_tokens, video_tokens, audio_tokens)

  def _sample(self, cond: jax.Array, items: list[inputs.Item], opts: SamplerOptions,
              known_latents) -> tuple[jax.Array, jax.Array | None]:
    """(latents (B, T, C), the pinned latents or None), blocking until sampled."""
    n = len(items)
    known, known_mask = (self._known_latents(items) if known_latents is None
                         else _pinned(known_latents, n, self.latent_shape))
    keys = jnp.stack([jax.random.PRNGKey(opts.seed + i) for i in range(n)])
    noise, renoise = self._noises(keys, shape=self.latent_shape, renoises=opts.steps - 1)
    if opts.sampler == 'student':
      z = self._student(self.params, cond, noise, renoise, known, known_mask, steps=opts.steps)
    else:
      z = self._teacher(self.params, cond, noise, known, known_mask, steps=opts.steps,
                        cfg_scale=opts.cfg_scale)
    return jax.block_until_ready(z), known

  def _check_finite(self, waves: np.ndarray, z: np.ndarray, opts: SamplerOptions) -> None:
    n = waves.shape[0]
    finite = (np.isfinite(waves).reshape(n, -1).all(axis=1)
              & np.isfinite(z).reshape(n, -1).all(axis=1))
    bad = np.flatnonzero(~finite).tolist()
    if bad:
      raise FloatingPointError(f'{self.source}: non-finite audio for prompt(s) {bad} '
                               f'({opts.sampler} sampler, {opts.steps} steps, cfg '
                               f'{opts.cfg_scale:g})')

  def _metas(self, items: list[inputs.Item], opts: SamplerOptions, options: InputOptions, *,
             latency: dict, pinned: bool) -> list[dict]:
    """Each result's meta: inputs, sampler, seed, NFE, latency, real-time factor."""
    n = len(items)
    shape_key = (n, opts.sampler, opts.steps, opts.cfg_scale,
                 tuple(it.frames is None for it in items),
                 tuple(it.prompt is None for it in items), not pinned)
    first_call = shape_key not in self._seen_shapes
    self._seen_shapes.add(shape_key)
    duration = self.output_samples / self.config.sample_rate
    nfe = (sampling.student_nfe(opts.steps) if opts.sampler == 'student'
           else sampling.euler_nfe(opts.steps, opts.cfg_scale))
    return [{'index': i, 'seed': opts.seed + i, 'kind': self.kind, 'sampler': opts.sampler,
             'steps': opts.steps, 'cfg_scale': opts.cfg_scale, 'nfe': nfe, 'batch_size': n,
             'sample_rate': self.config.sample_rate, 'duration_s': duration,
             'prompt_posterior': 'sample' if options.sample_prompt_posterior else 'mean',
             'inputs': it.record, 'latency_s': latency, 'includes_compilation': first_call,
             # seconds of wall time per second of audio, amortized over the batch (< 1 is
             # faster than real time)
             'real_time_factor': latency['total_s'] / (n * duration)}
            for i, it in enumerate(items)]


def _noises(keys: jax.Array, *, shape: tuple[int, int], renoises: int):
  """Per-prompt keys (B, 2) -> initial noise (B, T, C) and re-noise (renoises, B, T, C).

  Drawn per prompt so that a prompt's noise does not depend on the rest of its batch.
  """
  def one(key):
    k_init, k_re = jax.random.split(key)
    return (jax.random.normal(k_init, shape, jnp.float32),
            jax.random.normal(k_re, (renoises,) + shape, jnp.float32))
  noise, renoise = jax.vmap(one)(keys)
  return noise, jnp.swapaxes(renoise, 0, 1)


def _pinned(known_latents, n: int, latent_shape: tuple[int, int]):
  """(known (n, T, C), mask (n, T) bool) -> device arrays (n, T, C), (n, T, 1) for the sampler."""
  known, mask = (np.asarray(x) for x in known_latents)
  if known.shape != (n,) + latent_shape or mask.shape != (n, latent_shape[0]):
    raise ValueError(f'known_latents must be ({(n,) + latent_shape}, {(n, latent_shape[0])}), '
                     f'got ({known.shape}, {mask.shape})')
  return jnp.asarray(known, jnp.float32), jnp.asarray(mask.astype(bool)[..., None])


def _inference_params(params) -> dict:
  """Device arrays in the inference layout (`audiox.inference_params`). Split before the
  transfer: host (numpy) blocks are views, so the device holds the trunk once, not twice."""
  return jax.tree.map(jnp.asarray, audiox.inference_params(nn.unbox(params)))


UNUSED_SUBTREES = ('synchformer', 'disc')  # top-level subtrees the sampler itself never reads


def _check_params(params, m: mlc.ConfigDict, where) -> None:
  """Raises naming the subtrees/leaves whose shapes do not match the checkpoint's config."""
  model = audiox.build_model(m)
  want = jax.eval_shape(lambda: nn.unbox(audiox.init_params(model, m, jax.random.PRNGKey(0))))
  want_flat = {jax.tree_util.keystr(k): v.shape
               for k, v in jax.tree_util.tree_leaves_with_path(want)}
  have_flat = {jax.tree_util.keystr(k): np.shape(v)
               for k, v in jax.tree_util.tree_leaves_with_path(params)}
  problems = [f'missing {k}' for k in want_flat if k not in have_flat]
  # Weights the config does not use mean the config is not the one they were trained with
  # (an edited trunk.depth would otherwise load as the first layers). Whole subtrees that
  # other parts read (the Synchformer extractor, discriminator heads) are not the model's.
  used = {jax.tree_util.keystr(k[:i]) for k, _ in jax.tree_util.tree_leaves_with_path(want)
          for i in range(1, len(k) + 1)}
  unused = []
  for k, _ in jax.tree_util.tree_leaves_with_path(params):
    if jax.tree_util.keystr(k) in want_flat or getattr(k[0], 'key', None) in UNUSED_SUBTREES:
      continue
    # Named by the outermost subtree that the config does not use at all (['layers_1']).
    top = next(jax.tree_util.keystr(k[:i]) for i in range(1, len(k) + 1)
               if jax.tree_util.keystr(k[:i]) not in used)
    if top not in unused:
      unused.append(top)
  problems += [f'{k} is in the checkpoint but not used by the config' for k in unused]
  problems += [f'{k}: shape {have_flat[k]} but the config needs {s}'
               for k, s in want_flat.items() if k in have_flat and have_flat[k] != s]
  if problems:
    more = f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''
    raise ValueError(f'{where}: parameters do not match model_config.json: '
                     + '; '.join(problems[:5]) + more)

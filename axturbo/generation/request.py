"""The values of the generation API: what to make, how to sample it, how to read its inputs.

  Request         one clip: its conditions (text, video, sync, audio, image), its task
                  (inpaint span, continuation, keep_unmasked) and, for a long clip, its length
                  (duration_s, segments). What differs from clip to clip of a batch.
  SamplerOptions  sampler, steps, cfg_scale, seed: how a batch is sampled. Defaults that depend
                  on the checkpoint (the sampler of its kind, 4 / 250 steps, cfg 6) are filled
                  in by `Generator.resolve`.
  InputOptions    how a batch's conditions are read: the switches that reproduce the official
                  pipeline's quirks (official_image_scaling, sample_prompt_posterior,
                  prompt_pad) or bypass one of its inputs (no_sync), and the policy on prompts
                  with no condition at all (allow_unconditional). They are their own type
                  because they are neither a property of one clip (they hold for a whole call,
                  and the long-clip planner sets prompt_pad for its later windows) nor of the
                  sampler (they change what the model is conditioned on, not how it samples).
  LongOptions     overlap_s, tail_s, join: how `longform.generate_long` cuts a long clip into
                  windows and joins them.

    gen.generate([Request(text='rain'), Request(text='', video='clip.mp4')],
                 SamplerOptions(steps=4, seed=0))
    longform.generate_long(gen, Request(text='rain', duration_s=60), SamplerOptions(),
                           long=LongOptions(join='crossfade'))

Every value is frozen and checked once where it is made, in `__post_init__`: a bad field raises
a one-line ValueError naming it. What needs the model (span bounds inside the audio, the
duration in latent frames) or a file (decoding) is checked when the batch is generated.
No side effects on import; only numpy and the samplers' step rules.
"""
import dataclasses
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from axturbo import flow
from axturbo.generation import sampling

SAMPLERS = ('student', 'teacher')
PROMPT_PADS = ('left', 'right')
JOINS = ('latent', 'crossfade')


def is_path(x) -> bool:
  return isinstance(x, (str, pathlib.Path))


def seconds(value, name: str) -> float:
  """A finite number of seconds, else a ValueError naming `name`."""
  if isinstance(value, bool):
    raise ValueError(f'{name} must be a number of seconds, got {value!r}')
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a number of seconds, got {value!r}') from None
  if not math.isfinite(value):
    raise ValueError(f'{name} must be a finite number of seconds, got {value}')
  return value


def check_segments(segments, duration_s: float) -> list[tuple[float, str]]:
  """[(start_s, caption), ...] -> the same as floats and strings; one-line ValueErrors.

  The first segment starts at 0 s, starts increase strictly and lie inside the clip.
  """
  if isinstance(segments, (str, bytes)) or not segments:
    raise ValueError('segments must be a non-empty list of (start_s, caption) pairs')
  out = []
  for j, seg in enumerate(segments):
    try:
      start, caption = seg
      start = float(start)
    except (TypeError, ValueError):
      raise ValueError(f'segment {j}: must be a (start_s, caption) pair, got {seg!r}') from None
    if not isinstance(caption, str):
      raise ValueError(f'segment {j}: the caption must be a string, got {caption!r}')
    if not math.isfinite(start):
      raise ValueError(f'segment {j}: start must be a number of seconds, got {start}')
    if j == 0 and start != 0.0:
      raise ValueError(f'segment 0 starts at {start:g} s; the first segment must start at 0 s')
    if j and start <= out[-1][0]:
      raise ValueError(f'segment {j} starts at {start:g} s, not after segment {j - 1} '
                       f'({out[-1][0]:g} s); segments must be in time order')
    if start >= duration_s:
      raise ValueError(f'segment {j} starts at {start:g} s, at or past the end of the '
                       f'{duration_s:g} s clip')
    out.append((start, caption))
  return out


def _flag(value, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'{name} must be True or False, got {value!r}')
  return bool(value)


def _span(value) -> tuple[float, float]:
  try:
    start, end = (float(x) for x in value)
  except (TypeError, ValueError):
    raise ValueError(f'Request.inpaint must be (start_s, end_s), got {value!r}') from None
  if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
    raise ValueError(f'Request.inpaint span {start:g}:{end:g} s must satisfy 0 <= start < end')
  return start, end


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Request:
  """One clip to generate. Missing conditions take the official defaults (text "", an empty
  video, a silent audio prompt); the rules are in `axturbo.generation.generate`.

  text: the caption ("" is the official default for no text; with `segments`, leave it "").
  video: a file path, or (F, H, W, 3) frames in [0, 255] at model.video_fps (a long clip:
    frames over the whole clip).
  sync: Synchformer features of the video: an (S, Ds) array or a .npy / .pth path (default:
    `<video stem>.sync.npy`, else the checkpoint's Synchformer, else zeros).
  audio: a file path, or an (N,) / (N, C) array at model.sample_rate: the audio prompt.
  image: a still image (path or (H, W, 3) array) repeated as video frames.
  inpaint: (start_s, end_s) span of `audio` to regenerate.
  continuation: `audio` is the beginning; the output is the whole clip.
  keep_unmasked: inpainting / continuation: pin the latent frames of the given audio, so they
    come out exactly preserved.
  duration_s: a long clip of this many seconds, made window by window
    (`longform.generate_long`); None is one model window (`Generator.generate`).
  segments: a long clip's captions over time, [(start_s, caption), ...] from 0 s.
  """
  text: str = ''
  video: Any = None
  sync: Any = None
  audio: Any = None
  image: Any = None
  inpaint: tuple[float, float] | None = None
  continuation: bool = False
  keep_unmasked: bool = False
  duration_s: float | None = None
  segments: tuple[tuple[float, str], ...] | None = None

  def __post_init__(self):
    put = lambda name, value: object.__setattr__(self, name, value)
    if not isinstance(self.text, str):
      raise ValueError(f'Request.text must be a string, got {type(self.text).__name__}')
    put('continuation', _flag(self.continuation, 'Request.continuation'))
    put('keep_unmasked', _flag(self.keep_unmasked, 'Request.keep_unmasked'))
    if self.video is not None and self.image is not None:
      raise ValueError('Request.video and Request.image: give a video or an image, not both')
    if self.sync is not None and self.video is None and self.image is None:
      raise ValueError('Request.sync: sync features given without a video')
    if self.inpaint is not None:
      put('inpaint', _span(self.inpaint))
      if self.continuation:
        raise ValueError('Request.inpaint and Request.continuation: choose inpainting or '
                         'continuation, not both')
    if (self.inpaint is not None or self.continuation) and self.audio is None:
      task = 'inpainting' if self.inpaint is not None else 'continuation'
      raise ValueError(f'Request.audio: {task} needs an audio input')
    if self.keep_unmasked and self.inpaint is None and not self.continuation:
      raise ValueError('Request.keep_unmasked applies to inpainting or continuation only')
    if self.duration_s is None:
      if self.segments is not None:
        raise ValueError('Request.segments: captions over time are for a long clip; give '
                         'duration_s too')
      return
    put('duration_s', seconds(self.duration_s, 'Request.duration_s'))
    if self.segments is not None:
      if self.text:
        raise ValueError('Request.text and Request.segments: give text or segments, not both')
      try:
        put('segments', tuple(check_segments(self.segments, self.duration_s)))
      except ValueError as e:
        raise ValueError(f'Request.segments: {e}') from None
    if self.inpaint is not None:
      raise ValueError('Request.inpaint: inpainting edits one window; give inpaint without '
                       'duration_s')
    if self.audio is not None and not self.continuation:
      raise ValueError('Request.audio: with duration_s an audio input is the beginning of the '
                       'clip: set continuation=True')

  @property
  def captions(self) -> tuple[tuple[float, str], ...]:
    """The captions over time: `segments`, else `text` from 0 s."""
    return self.segments if self.segments is not None else ((0.0, self.text),)


def as_requests(requests) -> list[Request]:
  """A `Request` or a non-empty sequence of them -> a list; a one-line error otherwise."""
  if isinstance(requests, Request):
    return [requests]
  if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
    raise ValueError('requests must be a Request or a list of Requests (axturbo.generation.'
                     f'Request), got {type(requests).__name__}')
  requests = list(requests)
  if not requests:
    raise ValueError('no requests given')
  for i, r in enumerate(requests):
    if not isinstance(r, Request):
      raise ValueError(f'requests[{i}] must be a Request (axturbo.generation.Request), got '
                       f'{type(r).__name__}')
  return requests


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerOptions:
  """How a batch is sampled. Clip i of a batch uses noise seed `seed + i`, so it can be
  reproduced alone.

  sampler: 'student' (denoise-renoise) or 'teacher' (Euler + CFG); None: the checkpoint's kind.
  steps: student 1, 2 or 4 (default 4); teacher any >= 1 (default 250, official).
  cfg_scale: teacher only (default 6, official); the student uses none (1).
  seed: an integer.
  """
  sampler: str | None = None
  steps: int | None = None
  cfg_scale: float | None = None
  seed: int = 0

  def __post_init__(self):
    if self.sampler not in (None, *SAMPLERS):
      raise ValueError(f"SamplerOptions.sampler must be 'student' or 'teacher', got "
                       f'{self.sampler!r}')
    if self.steps is not None:
      if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)):
        raise ValueError(f'SamplerOptions.steps must be an integer, got {self.steps!r}')
      if self.steps < 1:
        raise ValueError(f'SamplerOptions.steps must be >= 1, got {self.steps}')
      object.__setattr__(self, 'steps', int(self.steps))
    if self.cfg_scale is not None:
      cfg = float(self.cfg_scale)
      if not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f'SamplerOptions.cfg_scale must be >= 0 (1 = no guidance), got '
                         f'{self.cfg_scale}')
      object.__setattr__(self, 'cfg_scale', cfg)
    if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
      raise ValueError(f'SamplerOptions.seed must be an integer, got {self.seed!r}')
    object.__setattr__(self, 'seed', int(self.seed))
    if self.sampler == 'student':
      self._check_student()

  def _check_student(self):
    if self.steps is not None:
      try:
        sampling.check_student_steps(self.steps)
      except ValueError as e:
        raise ValueError(f'SamplerOptions.steps: {e}') from None
    if self.cfg_scale not in (None, 1.0):
      raise ValueError(f'SamplerOptions.cfg_scale: the student sampler uses no classifier-free '
                       f'guidance (cfg_scale 1); got cfg_scale={self.cfg_scale:g}; use the '
                       'teacher sampler for CFG')

  def resolved(self, kind: str) -> 'SamplerOptions':
    """Every field set: sampler None -> `kind`, then that sampler's default steps and cfg."""
    sampler = self.sampler or kind
    if sampler == 'student':
      checked = dataclasses.replace(self, sampler=sampler)  # the student's rules, given fields
      return dataclasses.replace(checked, steps=self.steps or 4, cfg_scale=1.0)
    if sampler == 'teacher':
      return dataclasses.replace(
          self, sampler=sampler, steps=self.steps or flow.OFFICIAL_TEACHER_STEPS,
          cfg_scale=flow.OFFICIAL_CFG_SCALE if self.cfg_scale is None else self.cfg_scale)
    raise ValueError(f"sampler must be 'student' or 'teacher', got {sampler!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputOptions:
  """How a batch's conditions are read (module docstring: why these are their own type).

  prompt_pad: 'left' (official) or 'right' padding of short audio prompts.
  official_image_scaling: reproduce the official [0, 1]-image quirk.
  sample_prompt_posterior: sample the audio prompt's VAE posterior like the official code (its
    noise is then drawn for the whole batch from the seed) instead of taking its mean.
  no_sync: zero sync features for every video (else: the request's sync, the video's
    `.sync.npy`, the checkpoint's Synchformer, zeros, in that order).
  allow_unconditional: accept a request with empty text and no video, image or audio.
  """
  prompt_pad: str = 'left'
  official_image_scaling: bool = False
  sample_prompt_posterior: bool = False
  no_sync: bool = False
  allow_unconditional: bool = False

  def __post_init__(self):
    if self.prompt_pad not in PROMPT_PADS:
      raise ValueError(f"InputOptions.prompt_pad must be 'left' or 'right', got "
                       f'{self.prompt_pad!r}')
    for name in ('official_image_scaling', 'sample_prompt_posterior', 'no_sync',
                 'allow_unconditional'):
      object.__setattr__(self, name, _flag(getattr(self, name), f'InputOptions.{name}'))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongOptions:
  """How `longform.generate_long` windows a long clip (its module docstring).

  overlap_s: seconds each window shares with the previous one (None: half the used window).
  tail_s: seconds at the end of each generated window left unused (default 0).
  join: 'latent' (pinned latents, one decode) or 'crossfade' (equal-power crossfade).
  The ranges that depend on the model's window (whole latent frames, at least one new frame per
  window) are checked by `longform.check_duration`.
  """
  overlap_s: float | None = None
  tail_s: float = 0.0
  join: str = 'latent'

  def __post_init__(self):
    if self.join not in JOINS:
      raise ValueError(f'LongOptions.join must be one of {JOINS}, got {self.join!r}')
    if self.overlap_s is not None:
      object.__setattr__(self, 'overlap_s', seconds(self.overlap_s, 'LongOptions.overlap_s'))
    object.__setattr__(self, 'tail_s', seconds(self.tail_s, 'LongOptions.tail_s'))

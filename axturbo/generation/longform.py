"""Long-form generation: clips of any length from the fixed-length model, window by window.

The model makes one window of `Generator.output_samples` (10 s official, 2.048 s tiny). A longer
clip is cut into windows that overlap by `overlap` samples (default: half a window); window k
starts at k * (window - overlap). Window 0 is an ordinary generation. Window k >= 1 is the
continuation task the model was trained on: its audio prompt is the last `overlap` samples of
window k-1's decoded output, left-padded as in training, and the model writes the window that
begins with that audio. Windows run one after another (each needs its predecessor's audio); the
clips of a batch run together.

Two joins (`join`), measured against each other in docs/results.md:
  'latent'     keep_unmasked with the previous window's own latents: window k's first overlap
               frames are pinned to window k-1's last ones (bit-exact), only its new frames are
               sampled, and the joined latent sequence is decoded once over the whole clip, so
               the waveform has no cut anywhere.
  'crossfade'  every window is sampled whole (its head re-creates the prompt) and decoded on its
               own; consecutive windows meet in an equal-power crossfade over the overlap.

Window and overlap lengths are whole latent frames (`hop` samples), so both joins use the same
windows. `tail_s` leaves the end of every generated window unused: the windows are then shorter
than what the model makes (for a model that learned to end every clip in silence). A clip
shorter than one window is one window, trimmed.

Conditions over time:
  text   one caption for every window, or segments [(start_s, caption), ...] (the first at 0 s,
         starts increasing and inside the clip): window k reads the segment in force at the
         middle of its new part, the span that it alone contributes.
  video  frames at model.video_fps over the clip (a file or an (F, H, W, 3) array); window k sees
         the model's `num_frames` frames from its own start (the last frame repeats past the end).
  sync   Synchformer features over the clip at sync_len / (num_frames / video_fps) rows per second
         (an array, a .npy path, or `<video stem>.sync.npy` beside the video); window k reads the
         rows of its own span, zeros past the end.
Noise: window k of prompt i uses seed + i + k * WINDOW_SEED_STRIDE, so a clip depends only on its
own seed, and its window 0 is the one-window generation with that seed.
"""
import dataclasses
import math
import pathlib
import time
from typing import Sequence

from absl import logging
import numpy as np

from axturbo.data import audio_io
from axturbo.generation import media

JOINS = ('latent', 'crossfade')
# A bound on what one call may ask for: past it the joined latents and the one-pass decode grow
# without limit (256 windows: ~21 min at the official 10 s window and half overlap).
MAX_WINDOWS = 256
WINDOW_SEED_STRIDE = 1 << 20   # > any batch size, so no two (prompt, window) pairs share a seed


@dataclasses.dataclass(frozen=True)
class Window:
  """One window on the clip timeline, in samples.

  It spans [start, start + length); its prompt (window k-1's tail) covers [start, new_start);
  it alone contributes [new_start, stop), where stop is its end or the clip's end. The
  contributions of consecutive windows tile the clip: stop of window k = new_start of k + 1.
  """
  index: int
  start: int
  new_start: int
  stop: int
  length: int

  @property
  def end(self) -> int:
    return self.start + self.length

  @property
  def overlap(self) -> int:
    return self.new_start - self.start


# ------------------------------------------------------------------------------ the plan

def check_duration(duration_s, overlap_s, tail_s=0.0, *, sample_rate: int,
                   window_frames: int, hop: int) -> tuple[int, int, int]:
  """Validates a request -> (clip samples, frames used per window, overlap frames).

  A window's last `tail_s` seconds are generated but not used (a model whose training clips
  always end in silence ends every window in silence; docs/results.md). overlap_s None is half
  of the used window. The duration must hold at least one latent frame and need at most
  MAX_WINDOWS windows; the overlap must leave at least one new frame per window. One-line
  ValueErrors.
  """
  sec = lambda frames: f'{frames * hop / sample_rate:g} s'
  duration_s = _seconds(duration_s, 'duration_s')
  if round(duration_s * sample_rate) < hop:
    raise ValueError(f'duration_s must be at least one latent frame ({sec(1)}), got '
                     f'{duration_s:g}')
  tail = round(_seconds(tail_s, 'tail_s') * sample_rate / hop)
  if not 0 <= tail <= window_frames - 2:
    raise ValueError(f'tail_s must lie between 0 and the window ({sec(window_frames)}) minus two '
                     f'frames, got {tail_s:g}')
  used = window_frames - tail
  if overlap_s is None:
    overlap = used // 2
  else:
    overlap = round(_seconds(overlap_s, 'overlap_s') * sample_rate / hop)
    if not 1 <= overlap < used:
      raise ValueError(f'overlap_s must lie between one latent frame ({sec(1)}) and the used '
                       f'window ({sec(used)}) minus one frame, got {overlap_s:g}')
  samples = int(round(duration_s * sample_rate))
  count = window_count(samples, used * hop, (used - overlap) * hop)
  if count > MAX_WINDOWS:
    raise ValueError(f'duration_s {duration_s:g} needs {count} windows of {sec(used)} (overlap '
                     f'{sec(overlap)}); at most {MAX_WINDOWS} windows per clip')
  return samples, used, overlap


def _seconds(value, name: str) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a number of seconds, got {value!r}') from None
  if not math.isfinite(value):
    raise ValueError(f'{name} must be a finite number of seconds, got {value}')
  return value


def window_count(samples: int, length: int, stride: int) -> int:
  """Windows of `length` samples, `stride` apart, needed to cover `samples` samples."""
  return 1 if samples <= length else 1 + math.ceil((samples - length) / stride)


def plan_windows(samples: int, window_frames: int, overlap_frames: int, hop: int
                 ) -> list[Window]:
  """The windows that cover [0, samples): window k starts at k * (window - overlap) frames.

  The last window usually passes the clip's end (its stop is the clip's end); one window when
  the clip is no longer than a window.
  """
  length, overlap = window_frames * hop, overlap_frames * hop
  stride = length - overlap
  count = window_count(samples, length, stride)
  return [Window(k, k * stride, k * stride + (overlap if k else 0),
                 min(k * stride + length, samples), length) for k in range(count)]


def window_record(w: Window, sample_rate: int) -> dict:
  """Seconds (for the sidecar) and samples (for `windows_from_records`) of one window."""
  sec = lambda x: round(x / sample_rate, 6)
  return {'index': w.index, 'start_s': sec(w.start), 'end_s': sec(w.end),
          'new_start_s': sec(w.new_start), 'stop_s': sec(w.stop),
          'samples': [w.start, w.new_start, w.stop, w.length],
          'prompt_s': [sec(w.start), sec(w.new_start)] if w.index else None}


def windows_from_records(records: Sequence[dict]) -> list[Window]:
  return [Window(r['index'], *r['samples']) for r in records]


# ------------------------------------------------------------------------------ captions

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


def window_captions(windows: Sequence[Window], segments: Sequence[tuple[float, str]],
                    sample_rate: int) -> list[str]:
  """Per window: the caption of the segment in force at the middle of its new part."""
  starts = np.array([s for s, _ in segments])
  out = []
  for w in windows:
    middle = 0.5 * (w.new_start + w.stop) / sample_rate
    out.append(segments[int(np.searchsorted(starts, middle, side='right')) - 1][1])
  return out


# ------------------------------------------------------------------------------ video and sync

def first_frame(w: Window, sample_rate: int, fps: float) -> int:
  """Index of the video frame (at `fps`) where window w starts (nearest frame)."""
  return int(round(w.start * fps / sample_rate))


def sync_rate(m) -> float:
  """Rows of sync features per second of video: sync_len over the span of num_frames frames."""
  return m.video.sync_len * m.video_fps / m.video.num_frames


def take_rows(x: np.ndarray, first: int, count: int, *, pad: str) -> np.ndarray:
  """x[first:first + count] along axis 0, padded to `count` rows past the end of x: 'edge'
  repeats the last row (video frames, as the official reader), 'zero' adds zeros (sync)."""
  rows = x[first:first + count]
  missing = count - rows.shape[0]
  if missing <= 0:
    return rows
  if pad == 'edge':
    fill = np.repeat(x[-1:], missing, axis=0)
  else:
    fill = np.zeros((missing,) + x.shape[1:], x.dtype)
  return np.concatenate([rows, fill])


def clip_frames(video, m, num_frames: int) -> np.ndarray:
  """A video file or (F, H, W, 3) array at model.video_fps -> (num_frames, S, S, 3) uint8."""
  size = m.clip.image_size
  if _is_path(video):
    return media.read_video(video, m.video_fps, num_frames, size)
  return media.fit_frames(video, num_frames, size, what='video array')


def clip_sync(sync, video, m) -> np.ndarray | None:
  """Long sync features (rows, sync_dim) float32 from an array or a .npy file, else from
  `<video stem>.sync.npy` beside a video file, else None (zeros for every window)."""
  if sync is None and _is_path(video) and not media.is_image_path(video):
    candidate = media.sync_path_for(video)
    if candidate.is_file():
      sync = candidate
  if sync is None:
    return None
  where = str(sync) if _is_path(sync) else 'sync array'
  if _is_path(sync):
    if not str(sync).endswith('.npy'):
      raise media.MediaError(f'{where}: sync features of a long video must be a .npy file')
    try:
      sync = np.load(sync, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise media.MediaError(f'{where}: cannot read sync features ({e})') from None
  feats = np.asarray(sync, np.float32)
  if feats.ndim == 3 and feats.shape[0] == 1:
    feats = feats[0]
  if feats.ndim != 2 or feats.shape[1] != m.video.sync_dim or not feats.shape[0]:
    raise media.MediaError(f'{where}: sync features must be (rows, {m.video.sync_dim}), got '
                           f'{feats.shape}')
  try:
    return audio_io.check_finite(feats, 'sync features', where)
  except audio_io.BadSampleError as e:
    raise media.MediaError(str(e)) from None


def _is_path(x) -> bool:
  return isinstance(x, (str, pathlib.Path))


# ------------------------------------------------------------------------------ joins

def crossfade(waves: Sequence[np.ndarray], windows: Sequence[Window], samples: int
              ) -> np.ndarray:
  """Per-window waveforms (length, 2) -> the clip (samples, 2), equal-power crossfades.

  Over window k's overlap, the clip so far fades out with cos and window k fades in with sin
  (cos^2 + sin^2 = 1: constant power for uncorrelated signals); after it, window k alone.
  """
  out = np.zeros((windows[-1].end, waves[0].shape[1]), np.float32)
  for w, wave in zip(windows, waves):
    n = w.overlap
    if n:
      angle = 0.5 * np.pi * (np.arange(n) + 0.5) / n
      out[w.start:w.new_start] = (out[w.start:w.new_start] * np.cos(angle)[:, None]
                                  + wave[:n] * np.sin(angle)[:, None])
    out[w.new_start:w.end] = wave[n:w.length]
  return out[:samples]


def join_latents(latents: Sequence[np.ndarray], windows: Sequence[Window], hop: int
                 ) -> np.ndarray:
  """Per-window latents (T >= length / hop, C) -> the clip's (frames, C): each window's frames
  from its new start to its end (a window's first overlap frames are its predecessor's)."""
  out = np.zeros((windows[-1].end // hop, latents[0].shape[-1]), np.float32)
  for w, z in zip(windows, latents):
    a = w.start // hop
    out[w.new_start // hop:w.end // hop] = z[w.new_start // hop - a:w.end // hop - a]
  return out


def pinned_prompt_latents(previous: np.ndarray, w: Window, hop: int
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Window k-1's latents (B, T, C) -> (known (B, T, C), mask (B, T) bool) for window k:
  its first overlap frames are window k-1's last ones, the rest is sampled."""
  overlap, length = w.overlap // hop, w.length // hop
  known = np.zeros_like(previous)
  known[:, :overlap] = previous[:, length - overlap:length]
  mask = np.zeros(previous.shape[:2], bool)
  mask[:, :overlap] = True
  return known, mask


def window_gains(wave: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
  """(N,) gains that peak-normalize each window's own part [new_start, stop) of wave (N, C),
  ramping linearly over each overlap from the previous window's gain (no step at a seam)."""
  n = wave.shape[0]
  gains = [1.0 / max(float(np.max(np.abs(wave[w.new_start:w.stop]), initial=0.0)), 1e-8)
           for w in windows]
  out = np.empty(n, np.float32)
  for w, g in zip(windows, gains):
    out[w.new_start:w.stop] = g
  for w, g_prev, g in zip(windows[1:], gains, gains[1:]):
    a, b = w.start, min(w.new_start, n)
    out[a:b] = np.linspace(g_prev, g, w.overlap, endpoint=False)[:b - a]
  return out


def normalize_per_window(wave: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
  """(N, C) -> each window's part peak-normalized (`window_gains`), clamped to [-1, 1]."""
  return np.clip(wave * window_gains(wave, windows)[:, None], -1.0, 1.0)


# ------------------------------------------------------------------------------ generation

def clip_captions(text, segments, duration_s: float) -> list[list[tuple[float, str]]]:
  """Per prompt, its segments: `text` (a caption or a list) becomes one segment at 0 s;
  `segments` is one segment list, or a list of them (one per prompt)."""
  if segments is None:
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
      raise ValueError('no prompts given')
    return [[(0.0, t)] for t in texts]
  if (text if isinstance(text, str) else list(text)):
    raise ValueError('give text or segments, not both')
  nested = (isinstance(segments, (list, tuple)) and segments and
            isinstance(segments[0], (list, tuple)) and segments[0] and
            isinstance(segments[0][0], (list, tuple)))
  lists = list(segments) if nested else [segments]
  out = []
  for i, segs in enumerate(lists):
    try:
      out.append(check_segments(segs, duration_s))
    except ValueError as e:
      raise ValueError(f'prompt {i}: {e}' if nested else str(e)) from None
  return out


def _per_prompt(value, n: int, name: str) -> list:
  if isinstance(value, list):
    if len(value) != n:
      raise ValueError(f'{name}: got a list of {len(value)} values for {n} prompts')
    return value
  return [value] * n


def clip_video(videos: list, syncs: list, m, windows: Sequence[Window], samples: int
               ) -> tuple[list, list]:
  """Per prompt: the frames of the whole clip (or None) and its sync features (or None)."""
  if any(s is not None for s, v in zip(syncs, videos) if v is None):
    raise ValueError('sync features given without a video')
  sr, rate = m.sample_rate, sync_rate(m)
  count = first_frame(windows[-1], sr, m.video_fps) + m.video.num_frames
  frames = [None if v is None else clip_frames(v, m, count) for v in videos]
  feats = [None if v is None else clip_sync(s, v, m) for s, v in zip(syncs, videos)]
  for v, x in zip(videos, feats):
    if v is not None and x is None and _is_path(v):
      logging.warning('no sync features for %s (looked for %s); every window gets zeros', v,
                      media.sync_path_for(v))
    elif x is not None and x.shape[0] < round(samples / sr * rate):
      logging.warning('sync features cover %.2f s of the %.2f s clip; later windows get zeros',
                      x.shape[0] / rate, samples / sr)
  return frames, feats


def window_video(w: Window, frames: list, feats: list, m) -> dict:
  """`Generator.generate` video and sync arguments of window w: its own frames and sync rows
  (zeros for a prompt whose video has no features; None for a prompt without video)."""
  first = first_frame(w, m.sample_rate, m.video_fps)
  row = int(round(w.start / m.sample_rate * sync_rate(m)))
  zeros = np.zeros((m.video.sync_len, m.video.sync_dim), np.float32)
  return {'video': [None if x is None else take_rows(x, first, m.video.num_frames, pad='edge')
                    for x in frames],
          'sync': [None if x is None else zeros if y is None else
                   take_rows(y, row, m.video.sync_len, pad='zero')
                   for x, y in zip(frames, feats)]}


def generate_long(gen, text='', *, duration_s, segments=None, overlap_s=None,
                  tail_s: float = 0.0, join: str = 'latent', video=None, sync=None, image=None,
                  audio=None, inpaint=None, continuation=False, keep_unmasked=False, steps=None,
                  cfg_scale=None, sampler=None, seed: int = 0, prompt_pad: str = 'left',
                  **window_kwargs) -> list:
  """Clips of `duration_s` seconds from a `Generator`, window by window (module docstring).

  Args:
    gen: an `axturbo.generation.generate.Generator`.
    text: a caption or a list of B captions, the same for every window; or '' with `segments`.
    duration_s: seconds per clip (from one latent frame to MAX_WINDOWS windows).
    segments: [(start_s, caption), ...] for one prompt, or a list of such lists (B prompts).
    overlap_s: seconds each window shares with the previous one (default half a window).
    tail_s: seconds at the end of each generated window left unused (default 0).
    join: 'latent' or 'crossfade'.
    video, sync, image: as `Generator.generate` (a list gives one per prompt), over the whole
      clip: each window takes its own frames and sync rows.
    audio, continuation, keep_unmasked, prompt_pad: window 0 only: an audio the clip begins
      with (continuation=True is required with an audio).
    steps, cfg_scale, sampler, seed: as `Generator.generate`, for every window.
    **window_kwargs: passed to every window's `Generator.generate` (allow_unconditional,
      official_image_scaling, sample_prompt_posterior, ...).

  Returns:
    B `Result`s: waveform (samples, 2), latents (the joined frames, covering the last window
    to its end; with 'crossfade' these are each window's own frames, not what was decoded),
    meta with 'windows' (span, caption, prompt span, seed, latency of each window).
  """
  t_start = time.perf_counter()
  if join not in JOINS:
    raise ValueError(f'join must be one of {JOINS}, got {join!r}')
  sampler, steps, cfg_scale = gen.resolve_sampler(sampler, steps, cfg_scale)
  m, hop, sr = gen.config, gen.hop, gen.config.sample_rate
  samples, used, overlap = check_duration(duration_s, overlap_s, tail_s, sample_rate=sr,
                                          window_frames=gen.output_samples // hop, hop=hop)
  captions = clip_captions(text, segments, samples / sr)
  n = len(captions)
  if any(x is not None for x in _per_prompt(inpaint, n, 'inpaint')):
    raise ValueError('inpainting edits one window; give inpaint without duration_s')
  if any(a is not None and not c for a, c in zip(_per_prompt(audio, n, 'audio'),
                                                 _per_prompt(continuation, n, 'continuation'))):
    raise ValueError('with duration_s an audio input is the beginning of the clip: set '
                     'continuation=True')
  windows = plan_windows(samples, used, overlap, hop)
  per_window_text = [window_captions(windows, segs, sr) for segs in captions]

  videos = _per_prompt(video, n, 'video')
  frames, feats = clip_video(videos, _per_prompt(sync, n, 'sync'), m, windows, samples)
  if window_kwargs.get('no_sync'):  # every window's video then takes zeros
    if any(x is not None for x in _per_prompt(sync, n, 'sync')):
      raise ValueError('sync features given and no_sync asked; choose one')
    feats = [None] * n
  results, records = [], []
  for w in windows:
    kwargs = dict(steps=steps, cfg_scale=cfg_scale, sampler=sampler, image=image,
                  seed=seed + w.index * WINDOW_SEED_STRIDE, **window_kwargs)
    if any(v is not None for v in videos):
      kwargs.update(window_video(w, frames, feats, m))
    if w.index == 0:
      kwargs.update(audio=audio, continuation=continuation, keep_unmasked=keep_unmasked,
                    prompt_pad=prompt_pad)
    else:
      previous = results[-1]
      tail = slice(w.length - w.overlap, w.length)
      kwargs.update(audio=[r.waveform[tail] for r in previous], continuation=True,
                    prompt_pad='left')
      if join == 'latent':
        kwargs['known_latents'] = pinned_prompt_latents(
            np.stack([r.latents for r in previous]), w, hop)
    out = gen.generate([texts[w.index] for texts in per_window_text], **kwargs)
    results.append(out)
    first = first_frame(w, sr, m.video_fps)
    records.append({**window_record(w, sr), 'seed': kwargs['seed'],
                    'captions': [texts[w.index] for texts in per_window_text],
                    'video_frames': ([first, first + m.video.num_frames]
                                     if any(v is not None for v in videos) else None),
                    'latency_s': out[0].meta['latency_s'],
                    'includes_compilation': out[0].meta['includes_compilation']})

  t_join = time.perf_counter()
  latents = [join_latents([r[i].latents for r in results], windows, hop) for i in range(n)]
  if join == 'latent':
    waves = gen.decode(np.stack(latents))[:, :samples]
  else:
    waves = np.stack([crossfade([r[i].waveform for r in results], windows, samples)
                      for i in range(n)])
  if not np.isfinite(waves).all():
    raise FloatingPointError(f'{gen.source}: non-finite audio after joining the windows')
  t_end = time.perf_counter()
  latency = {'windows_s': sum(r['latency_s']['total_s'] for r in records),
             'join_s': t_end - t_join, 'total_s': t_end - t_start}
  first = results[0]
  out = []
  for i in range(n):
    base = first[i].meta
    meta = {**base, 'seed': seed + i, 'duration_s': samples / sr,
            'window_s': windows[0].length / sr, 'overlap_s': overlap * hop / sr,
            'tail_s': (gen.output_samples // hop - used) * hop / sr, 'join': join,
            'num_windows': len(windows), 'nfe_total': base['nfe'] * len(windows),
            'inputs': {**base['inputs'], **_video_record(videos[i], feats[i]),
                       'text': captions[i][0][1] if len(captions[i]) == 1
                       else '; '.join(f'{s:g} s: {c}' for s, c in captions[i]),
                       'segments': [[s, c] for s, c in captions[i]]},
            'windows': [{**{k: v for k, v in r.items() if k != 'captions'},
                         'caption': r['captions'][i],
                         'seed': r['seed'] + i} for r in records],
            'latency_s': latency,
            'includes_compilation': any(r['includes_compilation'] for r in records),
            'real_time_factor': latency['total_s'] / (n * samples / sr)}
    out.append(dataclasses.replace(first[i], waveform=waves[i].astype(np.float32),
                                   latents=latents[i], meta=meta))
  return out


def _video_record(video, feats) -> dict:
  """The sidecar's record of a whole clip's video and sync features."""
  if video is None:
    return {}
  return {'video': str(video) if _is_path(video) else f'array{tuple(np.shape(video))}',
          'sync': 'zeros' if feats is None else f'array{feats.shape}'}

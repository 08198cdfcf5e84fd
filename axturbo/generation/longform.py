"""Long-form generation: clips of any length from the fixed-length model, window by window.

    generate_long(gen, Request(text='rain on a roof', duration_s=60), SamplerOptions(seed=0),
                  long=LongOptions(overlap_s=2.0, join='latent'))

A planner over `Generator.generate`: it cuts each request's clip into windows, turns every
window into one-window requests (`window_requests`) and calls `gen.generate` once per window;
`Generator.generate` itself knows nothing of long clips.

The model makes one window of `Generator.output_samples` (10 s official, 2.048 s tiny). A
longer clip is cut into windows that overlap by `overlap` samples (default: half a window);
window k starts at k * (window - overlap). Window 0 is an ordinary generation. Window k >= 1 is
the continuation task the model was trained on: its audio prompt is the last `overlap` samples
of window k-1's decoded output, left-padded as in training, and the model writes the window
that begins with that audio. Windows run one after another (each needs its predecessor's
audio); the clips of a batch run together.

Two joins (`LongOptions.join`), measured against each other in docs/results.md:
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

Conditions over time (the fields of each `Request`):
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
import time
from typing import Sequence

from absl import logging
import numpy as np

from axturbo.data import audio_io
from axturbo.generation import media
from axturbo.generation.request import as_requests
from axturbo.generation.request import check_segments  # pylint: disable=unused-import (API)
from axturbo.generation.request import InputOptions
from axturbo.generation.request import is_path as _is_path
from axturbo.generation.request import JOINS  # pylint: disable=unused-import (API)
from axturbo.generation.request import LongOptions
from axturbo.generation.request import Request
from axturbo.generation.request import SamplerOptions
from axturbo.generation.request import seconds
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
                   window_frames: int, hop: int,
                   names: tuple[str, str, str] = ('duration_s', 'overlap_s', 'tail_s')
                   ) -> tuple[int, int, int]:
  """Validates a request -> (clip samples, frames used per window, overlap frames).

  A window's last `tail_s` seconds are generated but not used (a model whose training clips
  always end in silence ends every window in silence; docs/results.md). overlap_s None is half
  of the used window. The duration must hold at least one latent frame and need at most
  MAX_WINDOWS windows; the overlap must leave at least one new frame per window. One-line
  ValueErrors that call the three values `names` (a command line's flags: '--duration', ...).
  """
  d_name, o_name, t_name = names
  sec = lambda frames: f'{frames * hop / sample_rate:g} s'
  duration_s = seconds(duration_s, d_name)
  if round(duration_s * sample_rate) < hop:
    raise ValueError(f'{d_name} must be at least one latent frame ({sec(1)}), got '
                     f'{duration_s:g} s')
  tail = round(seconds(tail_s, t_name) * sample_rate / hop)
  if not 0 <= tail <= window_frames - 2:
    raise ValueError(f'{t_name} must lie between 0 and the window ({sec(window_frames)}) minus '
                     f'two frames, got {tail_s:g}')
  used = window_frames - tail
  if overlap_s is None:
    overlap = used // 2
  else:
    overlap = round(seconds(overlap_s, o_name) * sample_rate / hop)
    if not 1 <= overlap < used:
      raise ValueError(f'{o_name} must lie between one latent frame ({sec(1)}) and the used '
                       f'window ({sec(used)}) minus one frame, got {overlap_s:g}')
  samples = int(round(duration_s * sample_rate))
  count = window_count(samples, used * hop, (used - overlap) * hop)
  if count > MAX_WINDOWS:
    raise ValueError(f'{d_name} ({duration_s:g} s) needs {count} windows of {sec(used)} (overlap '
                     f'{sec(overlap)}); at most {MAX_WINDOWS} windows per clip')
  return samples, used, overlap


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


@dataclasses.dataclass(frozen=True)
class Plan:
  """The windows of a batch's long clips: clip samples, frames used per window, overlap
  frames, and the windows themselves."""
  samples: int
  used: int
  overlap: int
  windows: tuple[Window, ...]


def plan_clip(duration_s: float, long: LongOptions, *, sample_rate: int, window_frames: int,
              hop: int) -> Plan:
  """`check_duration` and `plan_windows` of a clip of `duration_s` seconds."""
  samples, used, overlap = check_duration(duration_s, long.overlap_s, long.tail_s,
                                          sample_rate=sample_rate, window_frames=window_frames,
                                          hop=hop)
  return Plan(samples, used, overlap, tuple(plan_windows(samples, used, overlap, hop)))


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


def window_video(w: Window, frames: list, feats: list, m, *, no_sync: bool = False) -> dict:
  """The video and sync of window w's requests: its own frames and sync rows (zeros for a
  prompt whose video has no features, None with `no_sync`; None for a prompt without video)."""
  first = first_frame(w, m.sample_rate, m.video_fps)
  row = int(round(w.start / m.sample_rate * sync_rate(m)))
  zeros = np.zeros((m.video.sync_len, m.video.sync_dim), np.float32)
  return {'video': [None if x is None else take_rows(x, first, m.video.num_frames, pad='edge')
                    for x in frames],
          'sync': [None if x is None or no_sync else zeros if y is None else
                   take_rows(y, row, m.video.sync_len, pad='zero')
                   for x, y in zip(frames, feats)]}


def generate_long(gen, requests: Request | Sequence[Request],
                  options: SamplerOptions | None = None, *, long: LongOptions | None = None,
                  inputs: InputOptions | None = None) -> list:
  """Clips of `duration_s` seconds from a `Generator`, window by window (module docstring).

  Args:
    gen: an `axturbo.generation.generate.Generator`; every window is one `gen.generate` call.
    requests: a `Request` or a list of B, all with the same duration_s (from one latent frame
      to MAX_WINDOWS windows). Each reads its text (or its segments) per window; its video and
      sync over the whole clip, each window taking its own frames and sync rows; its image in
      every window; its audio (continuation=True) and keep_unmasked in window 0 only.
    options: sampler, steps, cfg_scale and seed for every window (`Generator.generate`).
    long: overlap_s, tail_s and join (`LongOptions`).
    inputs: `InputOptions` for every window; windows after the first read their prompt (the
      previous window's tail) left-padded, as in training.

  Returns:
    B `Result`s: waveform (samples, 2), latents (the joined frames, covering the last window
    to its end; with 'crossfade' these are each window's own frames, not what was decoded),
    meta with 'windows' (span, caption, prompt span, seed, latency of each window).
  """
  t_start = time.perf_counter()
  requests = as_requests(requests)
  long, inputs = long or LongOptions(), inputs or InputOptions()
  opts = gen.resolve(options)
  m, hop, sr = gen.config, gen.hop, gen.config.sample_rate
  plan = plan_clip(_common_duration(requests), long, sample_rate=sr,
                   window_frames=gen.output_samples // hop, hop=hop)
  samples, windows = plan.samples, plan.windows
  per_window_text = [window_captions(windows, r.captions, sr) for r in requests]
  videos = [r.video for r in requests]
  frames, feats = clip_video(videos, [r.sync for r in requests], m, windows, samples)
  if inputs.no_sync:  # every window's video then takes zeros
    if any(r.sync is not None for r in requests):
      raise ValueError('sync features given and no_sync asked; choose one')
    feats = [None] * len(requests)
  results, records = [], []
  for w in windows:
    captions = [texts[w.index] for texts in per_window_text]
    window_opts = dataclasses.replace(opts, seed=opts.seed + w.index * WINDOW_SEED_STRIDE)
    known = None
    if w.index and long.join == 'latent':
      known = pinned_prompt_latents(np.stack([r.latents for r in results[-1]]), w, hop)
    out = gen.generate(
        window_requests(requests, w, captions=captions, previous=results[-1] if w.index else None,
                        video=(window_video(w, frames, feats, m, no_sync=inputs.no_sync)
                               if any(v is not None for v in videos) else None)),
        window_opts, known_latents=known,
        inputs=inputs if w.index == 0 else dataclasses.replace(inputs, prompt_pad='left'))
    results.append(out)
    first = first_frame(w, sr, m.video_fps)
    records.append({**window_record(w, sr), 'seed': window_opts.seed, 'captions': captions,
                    'video_frames': ([first, first + m.video.num_frames]
                                     if any(v is not None for v in videos) else None),
                    'latency_s': out[0].meta['latency_s'],
                    'includes_compilation': out[0].meta['includes_compilation']})
  return _join(gen, requests, results, records, plan=plan, join=long.join, feats=feats,
               t_start=t_start)


def _common_duration(requests: Sequence[Request]) -> float:
  """The one duration_s of a batch of long clips (their windows run together)."""
  for i, r in enumerate(requests):
    if r.duration_s is None:
      raise ValueError(f'prompt {i}: no duration_s; a long clip needs one (one window: '
                       'Generator.generate)')
  durations = sorted({r.duration_s for r in requests})
  if len(durations) > 1:
    raise ValueError(f'duration_s: the requests of one call share one duration (their windows '
                     f'run together), got {durations}')
  return durations[0]


def window_requests(requests: Sequence[Request], w: Window, *, captions: Sequence[str],
                    previous: Sequence | None, video: dict | None) -> list[Request]:
  """The one-window requests of window w: its caption, its frames and sync rows (`video`, from
  `window_video`), each request's image; window 0 takes each request's audio, continuation and
  keep_unmasked, window k >= 1 continues the tail of window k-1's results (`previous`)."""
  out = []
  for i, r in enumerate(requests):
    conditions = dict(text=captions[i], image=r.image)
    if video is not None:
      conditions.update(video=video['video'][i], sync=video['sync'][i])
    if w.index == 0:
      out.append(Request(**conditions, audio=r.audio, continuation=r.continuation,
                         keep_unmasked=r.keep_unmasked))
    else:
      tail = previous[i].waveform[w.length - w.overlap:w.length]
      out.append(Request(**conditions, audio=tail, continuation=True))
  return out


def _join(gen, requests: Sequence[Request], results: list, records: list, *, plan: 'Plan',
          join: str, feats: list, t_start: float) -> list:
  """The clips from the windows' results: joined latents and audio, and the clip's meta."""
  samples, used, overlap, windows = plan.samples, plan.used, plan.overlap, plan.windows
  hop, sr, n = gen.hop, gen.config.sample_rate, len(requests)
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
  for i, request in enumerate(requests):
    base, captions = first[i].meta, request.captions
    meta = {**base, 'duration_s': samples / sr,
            'window_s': windows[0].length / sr, 'overlap_s': overlap * hop / sr,
            'tail_s': (gen.output_samples // hop - used) * hop / sr, 'join': join,
            'num_windows': len(windows), 'nfe_total': base['nfe'] * len(windows),
            'inputs': {**base['inputs'], **_video_record(request.video, feats[i]),
                       'text': captions[0][1] if len(captions) == 1
                       else '; '.join(f'{s:g} s: {c}' for s, c in captions),
                       'segments': [[s, c] for s, c in captions]},
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

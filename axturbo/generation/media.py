"""Media for generation. Inputs: video, still images, sync features, audio prompts. Outputs: WAV,
video muxed with the generated audio, spectrogram PNG, JSON sidecar.

Decoding is shared with the training pipeline: video, sync features and audio are read by
`axturbo.data.video_io` / `axturbo.data.audio_io` (official `read_video` frame selection and
squash-resize, official prompt length / left padding; see those modules for the choices). This
module adds what only generation needs: still images, user arrays, the `<stem>.sync.npy`
look-up, prompt padding modes, the writers, and `MediaError` (a `BadSampleError` whose message
names the file or argument and the problem) instead of a library traceback.

Deliberate difference: a still image is repeated as uint8 frames in [0, 255]. The official
`read_video` returns [0, 1] data for images which the video conditioner then divides by 255
again (near-black frames); `official_image_scaling=True` reproduces that.
"""
import contextlib
import functools
import io
import logging
import os
import pathlib
import tempfile
import warnings
from typing import Callable

import numpy as np

from axturbo.data import audio_io
from axturbo.data import video_io

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
SYNC_SUFFIX = '.sync.npy'


class MediaError(audio_io.BadSampleError):
  """An input file or array that cannot be used; the message names it and says why."""


@contextlib.contextmanager
def _user_facing():
  """Re-raises the shared readers' BadSampleError (already naming the file) as MediaError."""
  try:
    yield
  except MediaError:
    raise
  except audio_io.BadSampleError as e:
    raise MediaError(str(e)) from None


def _existing(path, what: str) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_file():
    raise MediaError(f'{path}: {what} file does not exist')
  return path


def fit_frames(frames: np.ndarray, num_frames: int, image_size: int, what: str = 'video'
               ) -> np.ndarray:
  """(F, H, W, 3) frames (uint8, or numbers in [0, 255]) -> (num_frames, image_size,
  image_size, 3) uint8, squash-resized and padded with the last frame (`video_io.fit_frames`).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1 or min(frames.shape[1:3]) < 1:
    raise MediaError(f'{what}: frames must be (F >= 1, H, W, 3), got {frames.shape}')
  if frames.dtype != np.uint8:
    if not np.all(np.isfinite(frames)) or frames.min() < 0 or frames.max() > 255:
      raise MediaError(f'{what}: frame values must lie in [0, 255], got '
                       f'[{frames.min()}, {frames.max()}]')
    frames = np.round(frames).astype(np.uint8)
  return video_io.fit_frames(frames, num_frames, image_size)


def read_video(path, fps: float, num_frames: int, image_size: int, min_frames: int = 1
               ) -> np.ndarray:
  """A video file (or (F, H, W, 3) uint8 .npy) -> (num_frames, image_size, image_size, 3) uint8.

  The first num_frames / fps seconds, as the official `read_video` (`video_io.read_frames`).
  """
  with _user_facing():
    return video_io.read_frames(str(path), num_frames, image_size, fps, min_frames=min_frames)


def read_image(path_or_array, num_frames: int, image_size: int, *,
               official_image_scaling: bool = False) -> np.ndarray:
  """A still image -> (num_frames, image_size, image_size, 3) frames, the image repeated.

  uint8 in [0, 255] by default; float32 in [0, 1] with `official_image_scaling` (the official
  images-as-[0, 1] quirk, which the conditioner then scales by 1/255 once more).
  """
  from PIL import Image, UnidentifiedImageError
  if isinstance(path_or_array, np.ndarray):
    what = 'image array'
    image = path_or_array
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or min(image.shape[:2]) < 1:
      raise MediaError(f'{what}: must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}')
    image = image[..., :3]
  else:
    path = _existing(path_or_array, 'image')
    what = f'image {str(path)!r}'
    try:
      with Image.open(path) as im:
        image = np.asarray(im.convert('RGB'))
    except (UnidentifiedImageError, OSError) as e:
      raise MediaError(f'{what}: not a readable image ({e})') from None
  frames = fit_frames(image[None], 1, image_size, what=what)
  frames = np.repeat(frames, num_frames, axis=0)
  if official_image_scaling:
    return frames.astype(np.float32) / 255.0
  return frames


def is_image_path(path) -> bool:
  return pathlib.Path(path).suffix.lower() in IMAGE_SUFFIXES


def sync_path_for(video_path) -> pathlib.Path:
  """Where sync features for a video are looked for: same folder, `<stem>.sync.npy`."""
  video_path = pathlib.Path(video_path)
  return video_path.with_name(video_path.stem + SYNC_SUFFIX)


def load_sync(sync, sync_len: int, sync_dim: int, *, video_path=None,
              extract: Callable[[str], np.ndarray] | None = None) -> np.ndarray:
  """Synchformer features -> (sync_len, sync_dim) float32.

  `sync` may be an array, a `.npy` path or a `.pth` path (torch, weights_only). When it is None:
  the file `<video stem>.sync.npy` beside `video_path` if present (precomputed features), else
  `extract(video_path)` (the checkpoint's own extractor), else zeros, with a warning when a
  video file was given (zeros are what training with no video uses).
  """
  if sync is None:
    candidate = sync_path_for(video_path) if video_path is not None else None
    if candidate is not None and candidate.is_file():
      sync = candidate
    elif candidate is not None and extract is not None:
      return extract(str(video_path))
    else:
      if candidate is not None:  # frames given as an array or an image have no sync file
        logging.warning('no sync features for %s (looked for %s, and the checkpoint has no '
                        'Synchformer); using zeros', video_path, candidate)
      return np.zeros((sync_len, sync_dim), np.float32)
  with _user_facing():
    if isinstance(sync, np.ndarray):
      return video_io.check_sync(sync, sync_len, sync_dim, 'sync array')
    return video_io.load_sync(str(sync), sync_len, sync_dim)


def load_audio(path, sample_rate: int) -> np.ndarray:
  """An audio file -> (N, 2) float32 at `sample_rate` (mono duplicated, extra channels dropped)."""
  with _user_facing():
    return audio_io.load_clip(str(path), sample_rate)


def prepare_audio(wave: np.ndarray, rate: int, sample_rate: int, what: str = 'audio array'
                  ) -> np.ndarray:
  """(N,) or (N, C) waveform at `rate` -> (N', 2) float32 at `sample_rate` (`audio_io.conform`)."""
  wave = np.asarray(wave, np.float32)
  if wave.ndim == 1:
    wave = wave[:, None]
  if wave.ndim != 2 or wave.shape[1] < 1 or wave.shape[1] > 64:
    raise MediaError(f'{what}: expected (N,) or (N, C) channels-last audio, got {wave.shape}')
  if wave.shape[0] == 0:
    raise MediaError(f'{what}: contains no samples')
  with _user_facing():
    return audio_io.conform(wave, rate, sample_rate, what)


@functools.lru_cache(maxsize=256)
def _note_once(message: str):
  """Logs `message` the first time only: a benchmark pads every one of its (equal-length)
  prompts the same way, and a line per prompt would bury the console."""
  logging.info(message)


def fit_prompt(wave: np.ndarray, n: int, pad: str = 'left') -> tuple[np.ndarray, int]:
  """(N, 2) -> ((n, 2), offset): the first n samples, zero-padded to n on `pad` ('left' is the
  official `load_and_process_audio`). `offset` is where the audio starts in the result."""
  if pad not in ('left', 'right'):
    raise ValueError(f"pad must be 'left' or 'right', got {pad!r}")
  if wave.shape[0] > n:
    _note_once(f'audio prompt of {wave.shape[0]} samples cropped to its first {n}')
  missing = max(0, n - wave.shape[0])
  if missing > 0:
    _note_once(f'audio prompt of {wave.shape[0]} samples padded with {missing} zeros on the {pad}')
  if pad == 'left':
    return audio_io.left_pad_crop(wave, n), missing
  return audio_io.pad_crop(wave, 0, n), 0


# ------------------------------------------------------------------------------------- outputs


def normalize_peak(waves: np.ndarray, joint: bool = False) -> np.ndarray:
  """(B, N, 2) -> peak-normalized and clamped to [-1, 1].

  Per clip by default; `joint=True` divides the whole batch by one global max|x| (the official
  post-processing, which ties each clip's loudness to the loudest one in its batch).
  """
  waves = np.asarray(waves, np.float32)
  axes = tuple(range(waves.ndim)) if joint else tuple(range(1, waves.ndim))
  peak = np.maximum(np.max(np.abs(waves), axis=axes, keepdims=True), 1e-8)
  return np.clip(waves / peak, -1.0, 1.0)


def write_file(path, data: bytes) -> pathlib.Path:
  """Writes `data` to `path` whole or not at all: into a hidden temporary sibling, renamed into
  place. A full disk or a kill leaves no 0-byte or partial file at `path` (an OSError names
  `path`)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.partial')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException as e:
    pathlib.Path(tmp).unlink(missing_ok=True)
    if isinstance(e, OSError) and e.filename is None:
      raise OSError(e.errno, e.strerror, str(path)) from None
    raise
  return path


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
  """(N, 2) float -> a 32-bit float WAV (as the official release saves), in memory: the disk
  is written by plain file I/O, whose errors say what happened (ENOSPC), not libsndfile's."""
  import soundfile as sf
  buf = io.BytesIO()
  sf.write(buf, np.asarray(wave, np.float32), sample_rate, subtype='FLOAT', format='WAV')
  return buf.getvalue()


def write_wav(path, wave: np.ndarray, sample_rate: int) -> pathlib.Path:
  """(N, 2) float -> 32-bit float WAV (as the official release saves), written whole or not."""
  return write_file(path, wav_bytes(wave, sample_rate))


def write_video(path, frames: np.ndarray, fps: int) -> pathlib.Path:
  """(F, H, W, 3) uint8 frames -> an MPEG-4 file at `fps` (H and W rounded up to even)."""
  import av
  frames = np.asarray(frames, np.uint8)
  pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
  frames = np.pad(frames, pad, mode='edge')
  buf = io.BytesIO()
  with av.open(buf, 'w', format='mp4') as out:
    stream = out.add_stream('mpeg4', rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
    stream.options = {'qscale': '2'}
    for frame in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    out.mux(stream.encode(None))
  return write_file(path, buf.getvalue())


def muxed_bytes(video_path, wave: np.ndarray, sample_rate: int) -> bytes:
  """The video stream of `video_path` (copied, not re-encoded) plus `wave` (N, 2) as AAC: an
  MPEG-4 file, in memory."""
  import av
  wave = np.clip(np.asarray(wave, np.float32), -1.0, 1.0)
  buf = io.BytesIO()
  try:
    with av.open(str(video_path)) as src, av.open(buf, 'w', format='mp4') as dst:
      v_in = src.streams.video[0]
      v_out = dst.add_stream_from_template(v_in)
      a_out = dst.add_stream('aac', rate=sample_rate, layout='stereo')
      for packet in src.demux(v_in):
        if packet.dts is None:  # the demuxer's flush packet
          continue
        packet.stream = v_out
        dst.mux(packet)
      planar = np.ascontiguousarray(wave.T)  # (2, N), 'fltp'
      chunk = 1024
      for start in range(0, planar.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + chunk]),
                                           format='fltp', layout='stereo')
        frame.sample_rate = sample_rate
        frame.pts = start
        dst.mux(a_out.encode(frame))
      dst.mux(a_out.encode(None))
  except av.FFmpegError as e:
    raise MediaError(f'muxing {str(video_path)!r} with the generated audio failed: {e}') from None
  return buf.getvalue()


def mux_video(video_path, wave: np.ndarray, sample_rate: int, out_path) -> pathlib.Path:
  """Copies the video stream of `video_path` (no re-encoding) and adds `wave` (N, 2) as AAC."""
  return write_file(out_path, muxed_bytes(video_path, wave, sample_rate))


def log_spectrogram(wave: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
  """(N, 2) -> (n_fft // 2 + 1, frames) dB magnitude of the channel mean (Hann window)."""
  mono = np.asarray(wave, np.float32).mean(axis=-1)
  mono = np.pad(mono, (n_fft // 2, n_fft // 2))
  frames = 1 + max(0, (mono.shape[0] - n_fft) // hop)
  idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
  spec = np.abs(np.fft.rfft(mono[idx] * np.hanning(n_fft), axis=-1)).T
  return 20.0 * np.log10(np.maximum(spec, 1e-5))


def spectrogram_png(wave: np.ndarray, sample_rate: int, title: str = '') -> bytes:
  """A spectrogram PNG, in memory (matplotlib's Agg canvas; no pyplot global state)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  db = log_spectrogram(wave)
  fig = Figure(figsize=(8, 3), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  extent = (0.0, wave.shape[0] / sample_rate, 0.0, sample_rate / 2000.0)
  ax.imshow(db, origin='lower', aspect='auto', extent=extent, cmap='magma',
            vmin=db.max() - 80.0, vmax=db.max())
  ax.set_xlabel('time (s)')
  ax.set_ylabel('frequency (kHz)')
  with warnings.catch_warnings():
    # A character the font lacks (an emoji in the prompt) draws as a box; one warning per
    # glyph would bury the console.
    warnings.filterwarnings('ignore', message='Glyph .* missing from')
    if title:
      ax.set_title(title[:100], fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
  return buf.getvalue()


def save_spectrogram(path, wave: np.ndarray, sample_rate: int, title: str = '') -> pathlib.Path:
  """A spectrogram PNG file, written whole or not (`spectrogram_png`)."""
  return write_file(path, spectrogram_png(wave, sample_rate, title))


def sidecar_bytes(record: dict) -> bytes:
  """The JSON record of one output (inputs, seed, steps, NFE, latencies, real-time factor)."""
  import json
  return json.dumps(record, indent=2, default=str).encode()


def write_sidecar(path, record: dict) -> pathlib.Path:
  return write_file(path, sidecar_bytes(record))

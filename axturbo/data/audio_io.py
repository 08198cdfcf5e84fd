"""Audio decoding, resampling and the official crops (docs/official.md, "Inputs and tasks").

The one audio reader of the package: the training pipeline and generation (`axturbo.generation.media`, which
turns `BadSampleError` into its user-facing `MediaError`) both decode through here.

Waveforms are (N, C) float32 here (time first, as soundfile returns them); the official loader
works on (C, N) tensors. Every decode error is raised as `BadSampleError` naming the file, so the
pipeline can skip and count the sample (or stop, with `data.fail_fast`).
"""
import os

import numpy as np


class BadSampleError(ValueError):
  """A sample that cannot be used (unreadable/corrupt file, missing file, non-finite values)."""


def check_finite(x: np.ndarray, what: str, path: str) -> np.ndarray:
  if not np.all(np.isfinite(x)):
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise BadSampleError(f'{path}: {what} has {bad} non-finite values (NaN/inf)')
  return x


def load_audio(path: str) -> tuple[np.ndarray, int]:
  """Decodes an audio file -> ((N, C) float32, sample_rate).

  libsndfile (wav/flac/ogg/mp3) first; PyAV (FFmpeg's libraries, linked in: no ffmpeg binary
  needed) for the containers libsndfile lacks (m4a/aac/mp4/webm/...) and as a fallback
  whenever libsndfile fails. Raises BadSampleError for a missing, unreadable, truncated, empty
  or non-finite file.
  """
  if not os.path.isfile(path):
    raise BadSampleError(f'{path}: audio file does not exist')
  ext = os.path.splitext(path)[1].lower()
  if ext in _AV_ONLY:
    audio, sr = _load_with_av(path)
  else:
    import soundfile  # libsndfile >= 1.1 also reads mp3
    try:
      audio, sr = soundfile.read(path, dtype='float32', always_2d=True)
    except Exception as e:  # pylint: disable=broad-except
      audio, sr = _load_with_av(path, f'soundfile: {type(e).__name__}: {e}; ')
  if ext == '.wav':
    declared = _wav_declared_frames(path)
    # libsndfile silently returns what is there when the data chunk is cut short.
    if declared is not None and audio.shape[0] < declared:
      raise BadSampleError(f'{path}: truncated WAV ({audio.shape[0]} of {declared} frames '
                           'present)')
  if audio.shape[0] == 0:
    raise BadSampleError(f'{path}: audio file holds no samples')
  return check_finite(audio, 'audio', path), int(sr)


_AV_ONLY = ('.m4a', '.aac', '.mp4', '.m4v', '.mov', '.webm', '.mkv', '.wma', '.opus')


def _load_with_av(path, earlier: str = ''):
  """The first audio stream of any container FFmpeg reads, through PyAV, as float32 at its own
  rate and channel count (a format conversion only: no resampling, no downmix)."""
  import av
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        raise BadSampleError(f'{path}: cannot decode audio ({earlier}no audio stream)')
      stream = container.streams.audio[0]
      chunks, resampler, sr = [], None, None
      for frame in container.decode(stream):
        if resampler is None:
          sr = frame.sample_rate
          resampler = av.AudioResampler(format='fltp', layout=frame.layout, rate=sr)
        chunks += [f.to_ndarray() for f in resampler.resample(frame)]
      if resampler is not None:
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
  except BadSampleError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadSampleError(f'{path}: cannot decode audio ({earlier}'
                         f'PyAV: {type(e).__name__}: {e})') from e
  if not chunks:
    return np.zeros((0, 1), np.float32), int(sr or 0)
  return np.ascontiguousarray(np.concatenate(chunks, axis=1).T, np.float32), int(sr)


def _wav_declared_frames(path):
  """Frames the RIFF header promises (data chunk bytes / block align), or None if unknown."""
  with open(path, 'rb') as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
      return None
    block_align = None
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        return None
      size = int.from_bytes(chunk[4:], 'little')
      if chunk[:4] == b'fmt ':
        fmt = f.read(size + (size & 1))
        block_align = int.from_bytes(fmt[12:14], 'little')
      elif chunk[:4] == b'data':
        # Streaming writers leave 0 / 0xFFFFFFFF when the length was not known.
        if not block_align or size in (0, 0xFFFFFFFF):
          return None
        return size // block_align
      else:
        f.seek(size + (size & 1), 1)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  """(N, C) at sr_in -> (ceil(N * sr_out / sr_in), C) at sr_out, band-limited.

  The official `load_and_process_audio` uses torchaudio's windowed-sinc resampler, which gives
  ceil(N * sr_out / sr_in) samples. We use soxr 'HQ' (what `librosa.resample` runs by default,
  called directly to skip librosa's slow first call; the two give identical samples) and fix the
  length to the official ceil (soxr alone rounds, one sample shorter at times).
  """
  if sr_in == sr_out:
    return audio
  import soxr
  out = soxr.resample(audio, sr_in, sr_out, quality='HQ')
  return pad_crop(out, 0, -(-audio.shape[0] * sr_out // sr_in))


def to_stereo(audio: np.ndarray) -> np.ndarray:
  """(N, C) -> (N, 2): mono duplicated, extra channels dropped (official `Stereo`)."""
  if audio.shape[1] == 1:
    return np.repeat(audio, 2, axis=1)
  return audio[:, :2]


def crop_offsets(num_samples: int, crop_len: int, sample_rate: int,
                 grid_s: float = 10.0) -> list[int]:
  """Start samples the official random crop chooses from (`PadCrop_Normalized_T`).

  Offsets lie on a `grid_s` grid, the crop must fit, and for files longer than 2 grid steps the
  last 1.5 grid steps are never a start (the official 10 s grid with its 20 s / 15 s rule).
  Empty when the file is not longer than the crop (the crop then starts at 0).
  """
  if num_samples <= crop_len:
    return []
  total_s = num_samples // sample_rate
  starts = np.arange(0, total_s, grid_s)
  return [int(round(s * sample_rate)) for s in starts
          if round(s * sample_rate) + crop_len <= num_samples
          and (total_s <= 2 * grid_s or total_s - s >= 1.5 * grid_s)]


def pad_crop(audio: np.ndarray, offset: int, length: int) -> np.ndarray:
  """(N, C) -> (length, C): audio[offset:offset+length], zero-padded on the right."""
  out = np.zeros((length, audio.shape[1]), np.float32)
  piece = audio[offset:offset + length]
  out[:piece.shape[0]] = piece
  return out


def left_pad_crop(audio: np.ndarray, length: int) -> np.ndarray:
  """(N, C) -> (length, C): the first `length` samples, zero-padded on the LEFT when shorter.

  The official audio-prompt convention (`load_and_process_audio`): a short prompt ends where the
  generated audio begins.
  """
  piece = audio[:length]
  out = np.zeros((length, audio.shape[1]), np.float32)
  out[length - piece.shape[0]:] = piece
  return out


def conform(audio: np.ndarray, sr_in: int, sample_rate: int, where: str) -> np.ndarray:
  """(N, C) float32 at sr_in -> (N', 2) float32 at `sample_rate` (resampled, stereo).

  Raises BadSampleError naming `where` for non-finite input.
  """
  audio = check_finite(np.asarray(audio, np.float32), 'audio', where)
  return np.ascontiguousarray(to_stereo(resample(audio, sr_in, sample_rate)))


def load_clip(path: str, sample_rate: int) -> np.ndarray:
  """Decodes, resamples to `sample_rate` and forces stereo -> (N, 2) float32."""
  audio, sr = load_audio(path)
  return conform(audio, sr, sample_rate, path)

"""Video frames and sync features as the official `read_video` produces them (§2.1).

The one video / sync-feature reader of the package: the training pipeline and generation
(`axturbo.generation.media`, which adds image inputs and its user-facing `MediaError`) both read
through here.

Frames: every ceil(src_fps / target_fps)-th decoded frame from the seek point, squashed (no
crop, aspect ratio not kept) to size x size, then padded by repeating the last frame or truncated
to the requested count; uint8 (F, size, size, 3), channels last. Video files are decoded with
PyAV; `.npy` arrays (F, H, W, 3) uint8 (data/build_embedded.py) are taken as already at the
target frame rate.
"""
import math
import os

import numpy as np

from axturbo.data.audio_io import BadSampleError, check_finite


def fit_length(frames: np.ndarray, num_frames: int) -> np.ndarray:
  """(F, ...) -> (num_frames, ...): truncate, or repeat the last frame (`adjust_video_duration`)."""
  if frames.shape[0] >= num_frames:
    return frames[:num_frames]
  pad = np.repeat(frames[-1:], num_frames - frames.shape[0], axis=0)
  return np.concatenate([frames, pad], axis=0)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """(F, H, W, 3) uint8 -> (F, size, size, 3) uint8, bilinear with antialiasing, squashed.

  The official reader applies torchvision `Resize((224, 224))` to uint8 tensors: bilinear with
  antialiasing (torchvision's default), whose antialiased kernel is modelled on PIL's. PIL
  BILINEAR (antialiased when downscaling) is therefore the closest CPU equivalent without torch.
  """
  if frames.shape[1:3] == (size, size):
    return frames
  from PIL import Image
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                   for f in frames])


def fit_frames(frames: np.ndarray, num_frames: int, size: int) -> np.ndarray:
  """(F >= 1, H, W, 3) uint8 -> (num_frames, size, size, 3) uint8: truncate, squash, pad.

  Frames past `num_frames` are dropped before resizing (they would be dropped anyway).
  """
  return fit_length(resize_frames(frames[:num_frames], size), num_frames)


def frame_ids(src_fps: float, target_fps: float, seek_s: float, num_frames: int) -> range:
  """Source frame indices the official reader takes (before it clips at the file's end)."""
  step = max(1, int(math.ceil(src_fps / target_fps)))
  start = int(seek_s * src_fps)
  return range(start, start + num_frames * step, step)


def _decode_av(path: str, target_fps: float, seek_s: float, num_frames: int) -> np.ndarray:
  import av
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise BadSampleError(f'{path}: no video stream')
      stream = container.streams.video[0]
      src_fps = float(stream.average_rate or stream.guessed_rate or target_fps)
      wanted = frame_ids(src_fps, target_fps, seek_s, num_frames)
      picked = []
      # Sequential decode: the frame index is the decode order, as in decord's VideoReader.
      for i, frame in enumerate(container.decode(stream)):
        if i >= wanted.stop:
          break
        if i >= wanted.start and (i - wanted.start) % wanted.step == 0:
          picked.append(frame.to_ndarray(format='rgb24'))
  except BadSampleError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadSampleError(f'{path}: cannot decode video ({type(e).__name__}: {e})') from e
  if not picked:
    raise BadSampleError(f'{path}: no video frames at or after {seek_s} s')
  return np.stack(picked)


def read_frames(path: str, num_frames: int, size: int, fps: float = 5.0,
                seek_s: float = 0.0, min_frames: int = 1) -> np.ndarray:
  """(num_frames, size, size, 3) uint8 frames of `path` from `seek_s` at `fps`; a video with
  fewer than `min_frames` frames there is refused (a shorter one is padded with its last)."""
  if not os.path.isfile(path):
    raise BadSampleError(f'{path}: video file does not exist')
  if path.endswith('.npy'):
    try:
      frames = np.load(path, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except
      raise BadSampleError(f'{path}: cannot read frame array ({e})') from e
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise BadSampleError(f'{path}: expected (F, H, W, 3) uint8 frames, got '
                           f'{frames.shape} {frames.dtype}')
    frames = frames[int(round(seek_s * fps)):]
    if not len(frames):
      raise BadSampleError(f'{path}: no video frames at or after {seek_s} s')
  else:
    frames = _decode_av(path, fps, seek_s, num_frames)
  if len(frames) < min_frames:
    raise BadSampleError(f'{path}: {len(frames)} video frame(s) at {fps:g} fps; at least '
                         f'{min_frames} are needed')
  return fit_frames(frames, num_frames, size)


def load_sync(path: str, sync_len: int, sync_dim: int) -> np.ndarray:
  """(sync_len, sync_dim) float32 Synchformer features from .npy or .pth/.pt ((1, L, D) or (L, D)).

  .pth files are read with torch's weights-only loader (no arbitrary pickles).
  """
  if not os.path.isfile(path):
    raise BadSampleError(f'{path}: sync feature file does not exist')
  try:
    if path.endswith('.pth') or path.endswith('.pt'):
      import torch  # optional: only the official .pth feature files need it
      feats = torch.load(path, map_location='cpu', weights_only=True)
      feats = feats.float().numpy() if hasattr(feats, 'numpy') else np.asarray(feats)
    else:
      feats = np.load(path, allow_pickle=False)
  except ImportError as e:
    raise BadSampleError(f'{path}: reading .pth sync features needs torch; save them as .npy '
                         f'({e})') from e
  except Exception as e:  # pylint: disable=broad-except  (numpy/torch raise many types)
    raise BadSampleError(f'{path}: cannot read sync features ({type(e).__name__}: {e})') from e
  return check_sync(feats, sync_len, sync_dim, path)


def check_sync(feats, sync_len: int, sync_dim: int, where: str) -> np.ndarray:
  """(1, L, D) or (L, D) array -> (sync_len, sync_dim) float32; BadSampleError naming `where`."""
  feats = np.asarray(feats, np.float32)
  if feats.ndim == 3 and feats.shape[0] == 1:
    feats = feats[0]
  if feats.shape != (sync_len, sync_dim):
    raise BadSampleError(f'{where}: sync features have shape {feats.shape}, expected '
                         f'({sync_len}, {sync_dim}) (or with a leading 1)')
  return check_finite(feats, 'sync features', where)

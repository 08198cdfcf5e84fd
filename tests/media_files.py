"""Writes small media files for tests: mp4 (PyAV), wav (soundfile), png (PIL)."""
import pathlib

import numpy as np


def frame_color(i: int) -> np.ndarray:
  """A flat, well-separated RGB colour per frame index (survives lossy coding)."""
  return np.array([(40 * i) % 256, 255 - (40 * i) % 256, 128], np.uint8)


def write_mp4(path, num_frames: int = 25, fps: int = 10, height: int = 48, width: int = 64
              ) -> pathlib.Path:
  import av
  path = pathlib.Path(path)
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('mpeg4', rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    stream.options = {'qscale': '2'}
    for i in range(num_frames):
      img = np.broadcast_to(frame_color(i), (height, width, 3)).copy()
      frame = av.VideoFrame.from_ndarray(img, format='rgb24')
      out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
  return path


def write_wav(path, wave: np.ndarray, sample_rate: int) -> pathlib.Path:
  import soundfile as sf
  sf.write(str(path), wave, sample_rate, subtype='FLOAT')
  return pathlib.Path(path)


def tone(seconds: float, sample_rate: int, freq: float = 440.0, channels: int = 2) -> np.ndarray:
  t = np.arange(int(round(seconds * sample_rate))) / sample_rate
  mono = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
  return mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=-1)


def write_png(path, height: int = 20, width: int = 30) -> pathlib.Path:
  from PIL import Image
  img = np.zeros((height, width, 3), np.uint8)
  img[..., 0] = 200
  img[:, width // 2:, 1] = 100
  Image.fromarray(img).save(str(path))
  return pathlib.Path(path)

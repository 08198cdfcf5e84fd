"""Reading TensorBoard event files back in tests (tensorboardX writes them; TensorBoard itself
is not a dependency): the TFRecord framing and tensorboardX's Event proto."""
import pathlib
import struct

from tensorboardX.proto import event_pb2


def events(folder) -> list:
  """Every Event of every events.out.tfevents.* file directly in `folder`, file by file."""
  out = []
  for path in sorted(pathlib.Path(folder).glob('events.out.tfevents.*')):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      e = event_pb2.Event()
      e.ParseFromString(data[i + 12:i + 12 + n])
      out.append(e)
      i += 12 + n + 4
  return out


def scalars(folder) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the scalar summaries in `folder`."""
  out: dict[str, dict[int, float]] = {}
  for e in events(folder):
    for v in e.summary.value:
      if v.HasField('simple_value'):
        out.setdefault(v.tag, {})[e.step] = v.simple_value
  return out


def audio(folder) -> dict[str, dict[int, tuple[int, "np.ndarray"]]]:
  """{tag: {step: (sample rate, int16 samples)}} of the audio summaries, decoded from WAV."""
  import io
  import wave

  import numpy as np
  out: dict = {}
  for e in events(folder):
    for v in e.summary.value:
      if v.HasField('audio'):
        with wave.open(io.BytesIO(v.audio.encoded_audio_string)) as w:
          clip = np.frombuffer(w.readframes(w.getnframes()), np.int16)
          out.setdefault(v.tag, {})[e.step] = (w.getframerate(), clip)
  return out


def images(folder) -> dict[str, dict[int, tuple[int, int]]]:
  """{tag: {step: (height, width)}} of the image summaries."""
  out: dict = {}
  for e in events(folder):
    for v in e.summary.value:
      if v.HasField('image'):
        out.setdefault(v.tag, {})[e.step] = (v.image.height, v.image.width)
  return out

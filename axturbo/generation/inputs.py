"""A `Request` -> host arrays in model layout (`Item`), for one window of the model.

The rules (official defaults for missing modalities, inpainting/continuation timelines, the
keep_unmasked region) are documented in `axturbo.generation.generate`; what a `Request` checks
by itself is checked when it is made (`axturbo.generation.request`), what needs the model's
sizes or a file is checked here.
"""
import dataclasses
from typing import Any, Callable

from absl import logging
import ml_collections as mlc
import numpy as np

from axturbo.generation import media
from axturbo.generation.request import InputOptions
from axturbo.generation.request import is_path
from axturbo.generation.request import Request


@dataclasses.dataclass
class Item:
  """Host-side inputs of one prompt, already in model layout."""
  text: str
  frames: np.ndarray | None      # (F, S, S, 3)
  sync: np.ndarray               # (S_len, S_dim)
  prompt: np.ndarray | None      # (prompt_samples, 2)
  known_audio: np.ndarray | None  # (audio_samples, 2), output timeline, for keep_unmasked
  known_samples: np.ndarray | None  # (audio_samples,) bool
  record: dict


@dataclasses.dataclass(frozen=True)
class Layout:
  """A model's window on the host: its config, the samples of one output clip, the latent
  frames of one window and the samples per latent frame."""
  config: mlc.ConfigDict
  output_samples: int
  latent_frames: int
  hop: int


def prepare_item(request: Request, *, layout: Layout, options: InputOptions = InputOptions(),
                 where: str = 'prompt 0',
                 extract_sync: Callable[[str], np.ndarray] | None = None) -> Item:
  """Loads the inputs of one request of one window -> `Item`.

  Sync features of a video file come from `request.sync`, else its `.sync.npy`, else
  `extract_sync(path)`, else zeros; `options.no_sync` asks for zeros.

  Raises ValueError / media.MediaError starting with `where` (the prompt) and the problem.
  """
  if request.duration_s is not None:
    raise ValueError(f'{where}: duration_s asks for a long clip; generate it with '
                     'longform.generate_long (Generator.generate makes one window)')
  m, text = layout.config, request.text
  record: dict[str, Any] = {'text': text}
  frames = _frames(request, m, where, options.official_image_scaling, record)
  sync_arr = _sync(request, m, frames is not None, options.no_sync, extract_sync, where,
                   record)
  prompt = known_audio = known = None
  if request.audio is not None:
    prompt, known_audio, known = _audio_prompt(request, layout, options.prompt_pad, where,
                                               record)
  if not text.strip() and frames is None and prompt is None:
    record['unconditional'] = True
  return Item(text, frames, sync_arr, prompt, known_audio, known, record)


def _frames(request: Request, m, where: str, official_image_scaling: bool, record: dict
            ) -> np.ndarray | None:
  """(F, S, S, 3) frames of the request's video or image, or None; notes the source."""
  f, s = m.video.num_frames, m.clip.image_size
  video, image = request.video, request.image
  if video is not None:
    if is_path(video) and media.is_image_path(video):  # as the official read_video
      record['image'] = str(video)
      return media.read_image(video, f, s, official_image_scaling=official_image_scaling)
    if is_path(video):
      record['video'] = str(video)
      return media.read_video(video, m.video_fps, f, s)
    record['video'] = f'array{tuple(np.shape(video))}'
    return media.fit_frames(video, f, s, what=f'{where}: video array')
  if image is not None:
    frames = media.read_image(image, f, s, official_image_scaling=official_image_scaling)
    record['image'] = str(image) if is_path(image) else f'array{tuple(np.shape(image))}'
    return frames
  return None


def _sync(request: Request, m, has_frames: bool, no_sync: bool, extract_sync, where: str,
          record: dict) -> np.ndarray:
  """(sync_len, sync_dim) features for the request's frames (zeros without frames)."""
  sync, video = request.sync, request.video
  zeros = np.zeros((m.video.sync_len, m.video.sync_dim), np.float32)
  if sync is not None and no_sync:
    raise ValueError(f'{where}: sync features given and no_sync asked; choose one')
  if not has_frames:
    return zeros
  if no_sync:
    record['sync'] = 'zeros (no_sync)'
    return zeros
  video_path = video if is_path(video) and not media.is_image_path(video) else None
  feats = media.load_sync(sync, m.video.sync_len, m.video.sync_dim, video_path=video_path,
                          extract=extract_sync)
  if sync is not None:
    record['sync'] = str(sync) if is_path(sync) else 'array'
  elif video_path is not None and media.sync_path_for(video_path).is_file():
    record['sync'] = str(media.sync_path_for(video_path))
  else:
    record['sync'] = 'synchformer' if video_path and extract_sync else 'zeros'
  return feats


def _audio_prompt(request: Request, layout: Layout, prompt_pad: str, where: str, record: dict):
  """(prompt (prompt_samples, 2), known_audio, known_samples) of the request's audio: the
  inpaint span zeroed; known_* (keep_unmasked only, else None) on the output timeline."""
  m, audio = layout.config, request.audio
  sr, n = m.sample_rate, m.prompt_samples
  if is_path(audio):
    wave = media.load_audio(audio, sr)
    record['audio'] = str(audio)
  else:
    wave = media.prepare_audio(audio, sr, sr, what=f'{where}: audio array')
    record['audio'] = f'array{tuple(np.shape(audio))}'
  if wave.shape[0] > n:
    logging.warning('%s: the audio prompt lasts %.2f s; the model reads its first %.2f s '
                    '(model.prompt_samples)', where, wave.shape[0] / sr, n / sr)
  wave = wave[:n].copy()
  record['audio_s'] = wave.shape[0] / sr
  place = 0  # where the given audio sits in the output, for keep_unmasked
  if request.continuation:
    if wave.shape[0] >= layout.output_samples:
      raise ValueError(f'{where}: the continuation prompt lasts {wave.shape[0] / sr:.3f} s, '
                       f'the whole clip {layout.output_samples / sr:.3f} s: nothing to '
                       'continue; give a shorter audio')
    record['continuation'] = True
    keep = np.ones(wave.shape[0], bool)
  elif request.inpaint is not None:
    a, b = span_samples(request.inpaint, wave.shape[0], sr, where)
    wave[a:b] = 0.0
    record['inpaint_s'] = [float(request.inpaint[0]), float(request.inpaint[1])]
    keep = np.ones(wave.shape[0], bool)
    keep[a:b] = False
  prompt, offset = media.fit_prompt(wave, n, prompt_pad)
  if request.inpaint is not None:
    place = offset  # inpainting edits the prompt's own timeline
  if not request.keep_unmasked:
    return prompt, None, None
  total = max(m.audio_samples, layout.latent_frames * layout.hop)
  known_audio = np.zeros((total, 2), np.float32)
  known = np.zeros(total, bool)
  end = min(total, place + wave.shape[0])
  known_audio[place:end] = wave[:end - place]
  known[place:end] = keep[:end - place]
  record['keep_unmasked'] = True
  return prompt, known_audio[:m.audio_samples], known


def span_samples(span, n: int, sample_rate: int, where: str) -> tuple[int, int]:
  """(start_s, end_s) -> sample indices [a, b) inside an audio of n samples."""
  try:
    start_s, end_s = (float(x) for x in span)
  except (TypeError, ValueError):
    raise ValueError(f'{where}: inpaint must be (start_s, end_s), got {span!r}') from None
  a, b = int(round(start_s * sample_rate)), int(round(end_s * sample_rate))
  if not 0 <= a < b <= n:
    raise ValueError(f'{where}: inpaint span {start_s}:{end_s} s must satisfy 0 <= start < end '
                     f'<= {n / sample_rate:.3f} s (the audio used as prompt)')
  return a, b

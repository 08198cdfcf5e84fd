"""User inputs of one generation prompt -> host arrays in model layout (`Item`).

The rules (official defaults for missing modalities, inpainting/continuation timelines, the
keep_unmasked region) are documented in `axturbo.generation.generate`.
"""
import dataclasses
import pathlib
from typing import Any, Callable

from absl import logging
import ml_collections as mlc
import numpy as np

from axturbo.generation import media


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


def is_path(x) -> bool:
  return isinstance(x, (str, pathlib.Path))


def prepare_item(m: mlc.ConfigDict, i: int, text, video, sync, audio, image, inpaint,
                 continuation, keep_unmasked, official_image_scaling, prompt_pad, *,
                 output_samples: int, latent_frames: int, hop: int, no_sync: bool = False,
                 extract_sync: Callable[[str], np.ndarray] | None = None) -> Item:
  """Validates and loads the inputs of prompt i (see `Generator.generate`) -> `Item`.

  Sync features of a video file come from `sync`, else its `.sync.npy`, else
  `extract_sync(path)`, else zeros; `no_sync` asks for zeros.

  Raises ValueError / media.MediaError naming the prompt and the problem.
  """
  where = f'prompt {i}'
  if not isinstance(text, str):
    raise ValueError(f'{where}: text must be a string, got {type(text).__name__}')
  record: dict[str, Any] = {'text': text}
  f, s = m.video.num_frames, m.clip.image_size
  if video is not None and image is not None:
    raise ValueError(f'{where}: give a video or an image, not both')
  frames = None
  if video is not None:
    if is_path(video) and media.is_image_path(video):  # as the official read_video
      frames = media.read_image(video, f, s, official_image_scaling=official_image_scaling)
      record['image'] = str(video)
    elif is_path(video):
      frames = media.read_video(video, m.video_fps, f, s)
      record['video'] = str(video)
    else:
      frames = media.fit_frames(video, f, s, what=f'{where}: video array')
      record['video'] = f'array{tuple(np.shape(video))}'
  elif image is not None:
    frames = media.read_image(image, f, s, official_image_scaling=official_image_scaling)
    record['image'] = str(image) if is_path(image) else f'array{tuple(np.shape(image))}'
  if sync is not None and frames is None:
    raise ValueError(f'{where}: sync features given without a video')
  if sync is not None and no_sync:
    raise ValueError(f'{where}: sync features given and no_sync asked; choose one')
  if frames is not None and no_sync:
    sync_arr = np.zeros((m.video.sync_len, m.video.sync_dim), np.float32)
    record['sync'] = 'zeros (no_sync)'
  elif frames is not None:
    video_path = video if is_path(video) and not media.is_image_path(video) else None
    sync_arr = media.load_sync(sync, m.video.sync_len, m.video.sync_dim, video_path=video_path,
                               extract=extract_sync)
    if sync is not None:
      record['sync'] = str(sync) if is_path(sync) else 'array'
    elif video_path is not None and media.sync_path_for(video_path).is_file():
      record['sync'] = str(media.sync_path_for(video_path))
    else:
      record['sync'] = 'synchformer' if video_path and extract_sync else 'zeros'
  else:
    sync_arr = np.zeros((m.video.sync_len, m.video.sync_dim), np.float32)

  if inpaint is not None and continuation:
    raise ValueError(f'{where}: choose inpainting or continuation, not both')
  if (inpaint is not None or continuation) and audio is None:
    task = 'inpainting' if inpaint is not None else 'continuation'
    raise ValueError(f'{where}: {task} needs an audio input')
  if keep_unmasked and inpaint is None and not continuation:
    raise ValueError(f'{where}: keep_unmasked applies to inpainting or continuation only')
  prompt = known_audio = known = None
  if audio is not None:
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
    if continuation:
      if wave.shape[0] >= output_samples:
        raise ValueError(f'{where}: the continuation prompt lasts {wave.shape[0] / sr:.3f} s, '
                         f'the whole clip {output_samples / sr:.3f} s: nothing to '
                         'continue; give a shorter audio')
      record['continuation'] = True
      keep = np.ones(wave.shape[0], bool)
    elif inpaint is not None:
      a, b = span_samples(inpaint, wave.shape[0], sr, where)
      wave[a:b] = 0.0
      record['inpaint_s'] = [float(inpaint[0]), float(inpaint[1])]
      keep = np.ones(wave.shape[0], bool)
      keep[a:b] = False
    prompt, offset = media.fit_prompt(wave, n, prompt_pad)
    if inpaint is not None:
      place = offset  # inpainting edits the prompt's own timeline
    if keep_unmasked:
      total = max(m.audio_samples, latent_frames * hop)
      known_audio = np.zeros((total, 2), np.float32)
      known = np.zeros(total, bool)
      end = min(total, place + wave.shape[0])
      known_audio[place:end] = wave[:end - place]
      known[place:end] = keep[:end - place]
      known_audio = known_audio[:m.audio_samples]
      record['keep_unmasked'] = True
  if not text.strip() and frames is None and prompt is None:
    record['unconditional'] = True
  return Item(text, frames, sync_arr, prompt, known_audio, known, record)


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

"""Official manifest JSONL (and plain audio folders) -> base examples (see data/tasks.py).

A manifest line, as in the official release (data/train_manifest_10.jsonl):
  {"path": audio file, "video_path": video file or "", "sync_feature": .pth/.npy or null,
   "duration": s, "caption": {"audio_caption": {"0-10": "..."}} or a string,
   "sample_rate": Hz, "type": "text_condition-audio" | "video_condition-music" | ...}
Relative paths are resolved against `root` ('' = the working directory, as the official loader).
`duration` and `sample_rate` are informational (the decoded file is authoritative). IF-caps-Pro
annotations, where a line has them ("category": {name: count}, "SED": [[name, start_s, end_s]],
"time_relation": [names in temporal order], "caption_style"), are kept in the entry's
'annotations' (a JSON string) for the TFDS builders (data/tfds_builders.py).
A folder source holds audio files, each captioned by a same-named .txt (missing = empty caption),
all of type text_condition-audio.

Decoding follows the official loader (§2.1, §2.3, §6.8): resample to the model rate, force
stereo, crop `audio_samples` at an offset drawn from the 10 s grid (`audio_io.crop_offsets`),
zero-pad; video and sync cover the crop's window; the caption is the window's caption.
"""
import json
import logging
import os

import numpy as np

from axturbo.data import audio_io
from axturbo.data import tasks
from axturbo.data import video_io

ANNOTATION_KEYS = ('category', 'SED', 'time_relation', 'caption_style')
AUDIO_EXTS = ('.wav', '.flac', '.mp3', '.ogg', '.opus', '.aif', '.aiff', '.m4a')


def _resolve(path, root):
  if not path:
    return ''
  return path if os.path.isabs(path) or not root else os.path.join(root, path)


def read_manifest(path: str, root: str = '') -> list[dict]:
  """Validated entries {path, video_path, sync_feature, caption, type, task, where,
  annotations} of a JSONL file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'manifest {path!r} does not exist')
  entries = []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}:{line_no}'
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where}: not valid JSON ({e})') from e
      if not isinstance(row, dict) or not row.get('path'):
        raise ValueError(f'{where}: a manifest line needs a non-empty "path"')
      kind = row.get('type') or 'text_condition-audio'
      try:
        task = tasks.task_from_type(kind)
      except ValueError as e:
        raise ValueError(f'{where}: {e}') from e
      caption = row.get('caption', '')
      if not isinstance(caption, (str, dict)):
        raise ValueError(f'{where}: "caption" must be a string or a dict of time windows')
      entries.append({
          'path': _resolve(row['path'], root),
          'video_path': _resolve(row.get('video_path') or '', root),
          'sync_feature': _resolve(row.get('sync_feature') or '', root),
          'caption': json.dumps(caption),  # a str keeps entries flat for grain/pickling
          'type': kind, 'task': task, 'where': where,
          'annotations': json.dumps({k: row[k] for k in ANNOTATION_KEYS if k in row}),
      })
  if not entries:
    raise ValueError(f'manifest {path!r} has no entries')
  _warn_duplicates(entries, path)
  return entries


def _warn_duplicates(entries: list[dict], path: str) -> None:
  """One warning for lines that repeat an earlier entry (same files, caption and type). Both
  are kept (repeating a line is a way to weight it), but a copy-paste slip must not pass
  without a word."""
  first, repeats = {}, []
  for e in entries:
    key = tuple(e[k] for k in ('path', 'video_path', 'sync_feature', 'caption', 'type'))
    if key in first:
      repeats.append((e['where'].rsplit(':', 1)[1], first[key]))
    else:
      first[key] = e['where'].rsplit(':', 1)[1]
  if repeats:
    shown = ', '.join(f'line {a} repeats line {b}' for a, b in repeats[:3])
    more = f' and {len(repeats) - 3} more' if len(repeats) > 3 else ''
    logging.warning('manifest %s: %d duplicate line(s), kept: %s%s', path, len(repeats), shown,
                    more)


def scan_folder(folder: str) -> list[dict]:
  """Entries for every audio file under `folder` (sorted), captioned by a same-named .txt."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'audio folder {folder!r} does not exist')
  entries = []
  for dirpath, _, names in sorted(os.walk(folder)):
    for name in sorted(names):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in AUDIO_EXTS or name.startswith('.'):
        continue
      txt = os.path.join(dirpath, stem + '.txt')
      caption = open(txt).read().strip() if os.path.isfile(txt) else ''
      full = os.path.join(dirpath, name)
      entries.append({'path': full, 'video_path': '', 'sync_feature': '',
                      'caption': json.dumps(caption), 'type': 'text_condition-audio',
                      'task': 0, 'where': full, 'annotations': '{}'})
  if not entries:
    raise ValueError(f'audio folder {folder!r} holds no files ending in {AUDIO_EXTS}')
  return entries


def load_entries(source: str, root: str = '') -> list[dict]:
  """A .jsonl manifest or a folder of audio + .txt captions."""
  if os.path.isdir(source):
    return scan_folder(source)
  return read_manifest(source, root)


def window_caption(caption, start_s: float) -> str:
  """The caption of the time window starting at `start_s` (else the first window).

  `caption` is a string, {"audio_caption": {"a-b": text}} or {"a-b": text}.
  """
  if isinstance(caption, str):
    return caption
  windows = caption.get('audio_caption', caption)
  if isinstance(windows, str):
    return windows
  if not windows:
    return ''
  for key, text in windows.items():
    lo, _, _ = str(key).partition('-')
    try:
      if abs(float(lo) - start_s) < 1e-6:
        return str(text)
    except ValueError:
      continue
  return str(next(iter(windows.values())))


def official_prompt(audio, start, kind, sample_rate, prompt_samples):
  """(P, 2) prompt of an official audio_condition/uni_condition line (dataset.py semantics).

  '-audio': the 10 s from the crop start; '-music': the 10 s before it (the first 10 s when the
  crop starts before 10 s). Left-padded to P as `load_and_process_audio`.
  """
  ten = 10 * sample_rate
  if kind.endswith('-music') and start >= ten:
    piece = audio[start - ten:start]
  elif kind.endswith('-music'):
    piece = audio[:ten]
  else:
    piece = audio[start:start + ten]
  return audio_io.left_pad_crop(piece, prompt_samples)


# The key under which `decode_entry(sync_frames=...)` returns the frames for sync features.
SYNC_FRAMES = 'sync_frames'


def decode_entry(entry: dict, rng: np.random.Generator, m, d, random_crop: bool,
                 sync_frames: tuple[int, int, int] | None = None) -> dict:
  """Manifest entry -> base example. m: config.model, d: config.data. Raises BadSampleError.

  sync_frames: (fps, count, size). A video entry without a `sync_feature` then also carries
  SYNC_FRAMES: (count, size, size, 3) uint8 frames at `fps` from the crop's start, for a
  Synchformer to turn into its `sync` (data/prepare.py).
  """
  sr, n = m.sample_rate, m.audio_samples
  audio = audio_io.load_clip(entry['path'], sr)
  offsets = audio_io.crop_offsets(len(audio), n, sr, d.crop_grid_s) if random_crop else []
  start = int(rng.choice(offsets)) if offsets else 0
  start_s = start / sr
  task = int(entry['task'])
  frames = np.zeros((m.video.num_frames, m.clip.image_size, m.clip.image_size, 3), np.uint8)
  sync = np.zeros((m.video.sync_len, m.video.sync_dim), np.float32)
  extra = {}
  has_video = task in (1, 2, 6)
  if has_video:
    if not entry['video_path']:
      raise audio_io.BadSampleError(f'{entry["where"]}: type {entry["type"]!r} needs a '
                                    '"video_path"')
    frames = video_io.read_frames(entry['video_path'], m.video.num_frames, m.clip.image_size,
                                  m.video_fps, start_s)
    if entry['sync_feature']:
      sync = video_io.load_sync(entry['sync_feature'], m.video.sync_len, m.video.sync_dim)
    elif sync_frames:
      extra = {SYNC_FRAMES: _sync_frames(entry['video_path'], start_s, *sync_frames)}
  has_prompt = task in (5, 6)
  prompt = (official_prompt(audio, start, entry['type'], sr, m.prompt_samples) if has_prompt
            else np.zeros((m.prompt_samples, 2), np.float32))
  crop = audio_io.pad_crop(audio, start, n)
  return {
      'audio': crop, 'length': np.int32(min(len(audio) - start, n)),
      'frames': frames, 'has_video': np.bool_(has_video), 'sync': sync,
      'prompt': prompt, 'has_prompt': np.bool_(has_prompt),
      'caption': window_caption(json.loads(entry['caption']), start_s),
      'task': np.int32(task), **extra,
  }


def _sync_frames(path: str, start_s: float, fps: int, count: int, size: int) -> np.ndarray:
  if path.endswith('.npy'):
    raise audio_io.BadSampleError(f'{path}: a .npy frame array has no frame rate to read '
                                  f'{fps} fps sync frames from; give its line a "sync_feature"')
  # Two frames at least: a still saved as a video has no motion to sync to.
  return video_io.read_frames(path, count, size, fps, start_s, min_frames=2)

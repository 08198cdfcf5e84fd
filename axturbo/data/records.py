"""Pre-decoded base examples (data/tasks.py) in ArrayRecord shards, read through grain.

Layout of a records folder (written by scripts/prepare.py):
  <split>-00000-of-00004.array_record ...  one record = one base example, an uncompressed .npz
                                           (no pickle: strings are unicode arrays)
  <split>.json                             {'num_examples', 'shapes' of the model config, ...}
Shapes are fixed by the model config at preparation time; `RecordsSource` refuses a folder
written for other shapes, naming the field that differs.
"""
import glob
import io
import json
import os

import numpy as np

BASE_KEYS = ('audio', 'length', 'frames', 'has_video', 'sync', 'prompt', 'has_prompt',
             'caption', 'task')


def serialize(example: dict) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(example[k]) for k in BASE_KEYS})
  return buf.getvalue()


def deserialize(data: bytes) -> dict:
  with np.load(io.BytesIO(data), allow_pickle=False) as z:
    out = {k: z[k] for k in BASE_KEYS}
  out['caption'] = str(out['caption'])
  return out


def model_shapes(m) -> dict:
  """The shapes a records folder must agree with (from config.model)."""
  return {'sample_rate': m.sample_rate, 'audio_samples': m.audio_samples,
          'prompt_samples': m.prompt_samples, 'num_frames': m.video.num_frames,
          'image_size': m.clip.image_size, 'sync_len': m.video.sync_len,
          'sync_dim': m.video.sync_dim, 'video_fps': m.video_fps}


def shard_paths(folder: str, split: str) -> list[str]:
  return sorted(glob.glob(os.path.join(folder, f'{split}-*-of-*.array_record')))


def write_shards(examples, folder: str, split: str, num_shards: int, m, num_examples: int,
                 meta: dict | None = None, progress=None) -> dict:
  """Writes `examples` (an iterable of base examples, None = skipped) to contiguous shards.

  Shard s holds a contiguous run of examples, so the records keep the source's index order
  (a records pipeline then replays the source pipeline exactly).

  Returns the summary written to <split>.json. Old shards of `split` are replaced only after
  all new ones are complete (written under a temporary name, then renamed).
  """
  from array_record.python import array_record_module
  os.makedirs(folder, exist_ok=True)
  names = [os.path.join(folder, f'{split}-{i:05d}-of-{num_shards:05d}.array_record')
           for i in range(num_shards)]
  # group_size:1 keeps every record separately addressable (random access for shuffling).
  writers = [array_record_module.ArrayRecordWriter(n + '.tmp', 'group_size:1') for n in names]
  written = skipped = 0
  for i, ex in enumerate(examples):
    if ex is None:
      skipped += 1
    else:
      writers[min(written * num_shards // max(num_examples, 1), num_shards - 1)].write(
          serialize(ex))
      written += 1
    if progress:
      progress(i + 1, num_examples, written, skipped)
  for w in writers:
    w.close()
  for old in shard_paths(folder, split):
    os.remove(old)
  for n in names:
    os.replace(n + '.tmp', n)
  summary = {'split': split, 'num_examples': written, 'skipped': skipped,
             'num_shards': num_shards, 'shapes': model_shapes(m), **(meta or {})}
  with open(os.path.join(folder, f'{split}.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


class RecordsSource:
  """grain random-access source of base examples from a records folder."""

  def __init__(self, folder: str, split: str, m):
    paths = shard_paths(folder, split)
    meta_path = os.path.join(folder, f'{split}.json')
    if not paths or not os.path.isfile(meta_path):
      raise FileNotFoundError(f'no {split!r} records in {folder!r} (expected {split}-*-of-*.'
                              f'array_record and {split}.json; run scripts/prepare.py)')
    with open(meta_path) as f:
      meta = json.load(f)
    for key, want in model_shapes(m).items():
      got = meta.get('shapes', {}).get(key)
      if got != want:
        raise ValueError(f'{meta_path}: records were prepared with {key}={got}, but the model '
                         f'config has {key}={want}; rerun scripts/prepare.py')
    import grain
    self._paths = paths
    self._source = grain.sources.ArrayRecordDataSource(paths)
    if len(self._source) != meta['num_examples']:
      raise ValueError(f'{folder}: {len(self._source)} records in the shards, but {meta_path} '
                       f'says {meta["num_examples"]}')

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    return deserialize(self._source[index])

  def __repr__(self):
    return f'RecordsSource({self._paths[0]}..., n={len(self)})'

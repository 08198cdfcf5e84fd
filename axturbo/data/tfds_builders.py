"""TFDS dataset builders: manifests, audio folders and the embedded clips -> ArrayRecord files.

  builder = tfds_builders.build(config, 'vggsound', '/data/tfds', workers=8)
  # -> /data/tfds/axturbo_manifest/vggsound/1.0.0/ (data/prepare.py is the command line)
  tfds.data_source('axturbo_manifest/vggsound', split='train', data_dir='/data/tfds')

Three builders, one per kind of source (config.data.source), each with a builder config that
names the source and the model config's rate and shapes (`tfds_source.model_shapes`):
  axturbo_manifest  official manifest .jsonl files (train and optional heldout)
  axturbo_folder    folders of audio files captioned by same-named .txt files
  axturbo_events    the embedded procedural clips (data/embedded.py), train and heldout splits
An example is the base example the direct source gives (`pipeline.base_source`, decoded as the
training pipeline does) with the IF-caps-Pro annotations where the source has them
(`tfds_source.features`). Examples keep the source's order (TFDS's shuffling is off), so the
pipeline on a built dataset replays the pipeline on its source. The crop offset of a file
longer than the crop is drawn once here (from the config's seed), not anew each epoch.

Files that fail to decode are skipped, logged and counted in the dataset's metadata:
`info.metadata['skipped'][split]` and `['skipped_messages'][split]` (the first
MAX_SKIP_MESSAGES of the decoder's messages); `fail_fast=True` stops at the first instead.

Builders are not registered with TFDS (nothing happens on import): build by calling them; read
through `tfds.data_source(name, data_dir=...)`, which finds the files without this module.
No TensorFlow is needed to build or read (docs/guide/data.md).
"""
import contextlib
import dataclasses
import importlib.util
import json
import multiprocessing
import os

from absl import logging
from etils import epath
import ml_collections as mlc
import numpy as np
import tensorflow_datasets as tfds

from axturbo.data import audio_io
from axturbo.data import embedded
from axturbo.data import manifest
from axturbo.data import pipeline
from axturbo.data import tfds_source

MAX_SKIP_MESSAGES = 100


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """The model config's rate and shapes an example is built at (`tfds_source.SHAPE_KEYS`)."""
  sample_rate: int = 0
  audio_samples: int = 0
  prompt_samples: int = 0
  num_frames: int = 0
  image_size: int = 0
  video_fps: int = 0
  sync_len: int = 0
  sync_dim: int = 0


@dataclasses.dataclass(eq=False)
class FilesConfig(ShapesConfig):
  """How files are decoded (config.data): the official crop, and the seed of its offset."""
  random_crop: bool = True
  crop_grid_s: float = 10.0
  seed: int = 0
  sync_checkpoint: str = ''    # whose Synchformer makes the missing sync features ('' = zeros)


@dataclasses.dataclass(eq=False)
class ManifestConfig(FilesConfig):
  manifest: str = ''
  heldout_manifest: str = ''   # '' = no heldout split
  root: str = ''               # base of relative manifest paths ('' = working directory)


@dataclasses.dataclass(eq=False)
class FolderConfig(FilesConfig):
  folder: str = ''
  heldout_folder: str = ''     # '' = no heldout split


@dataclasses.dataclass(eq=False)
class EventsConfig(ShapesConfig):
  num_clips: int = 0
  heldout_clips: int = 0       # 0 = no heldout split
  duration_s: float = 0.0
  caption_probs: tuple = ()    # the train split's caption-style probabilities; () = uniform
  exclude_categories: tuple = ()   # categories no train clip holds
  require_categories: tuple = ()   # () or categories one of which every train clip holds
  require_share: float = 1.0       # the share of train clips drawn with require_categories


def shapes_of(c: ShapesConfig) -> dict:
  return {k: getattr(c, k) for k in tfds_source.SHAPE_KEYS}


def settings_of(c: ShapesConfig) -> dict:
  """The fields our builder configs add to TFDS's: what the dataset was built from."""
  own = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in own}


def model_view(shapes: dict) -> mlc.ConfigDict:
  """The config.model fields that decoding reads, from `tfds_source.model_shapes` (its inverse)."""
  s = shapes
  return mlc.ConfigDict({
      'sample_rate': s['sample_rate'], 'audio_samples': s['audio_samples'],
      'prompt_samples': s['prompt_samples'], 'video_fps': s['video_fps'],
      'video': {'num_frames': s['num_frames'], 'sync_len': s['sync_len'],
                'sync_dim': s['sync_dim']},
      'clip': {'image_size': s['image_size']}})


def annotation_features(ann: dict, where: str) -> dict:
  """IF-caps-Pro annotations ({'category': {name: count}, 'SED': [[name, start_s, end_s]],
  'time_relation': [names], 'caption_style': str}; any may be absent) -> the annotation
  features. Raises BadSampleError naming `where` for a malformed one."""
  try:
    category = dict(ann.get('category') or {})
    sed = [(str(n), float(s), float(e)) for n, s, e in ann.get('SED') or []]
    return {
        'category': {'name': [str(k) for k in category],
                     'count': [int(v) for v in category.values()]},
        'sed': {'name': [n for n, _, _ in sed], 'start_s': [s for _, s, _ in sed],
                'end_s': [e for _, _, e in sed]},
        'time_relation': [str(x) for x in ann.get('time_relation') or []],
        'caption_style': str(ann.get('caption_style') or ''),
    }
  except (TypeError, ValueError) as e:
    raise audio_io.BadSampleError(f'{where}: unreadable IF-caps-Pro annotations ({e})') from e


class EventsExample:
  """Embedded clip (`embedded.make_clip`) -> example: `pipeline.embedded_example` + its
  annotations."""

  def __init__(self, m):
    self.m = m

  def __call__(self, clip, rng):
    del rng  # a clip is fixed by its seed
    ann = {**clip['annotations'], 'caption_style': clip['caption_style']}
    return {**pipeline.embedded_example(clip, self.m),
            **annotation_features(ann, f'{clip["split"]} clip {clip["seed"]}')}


class FileExample:
  """Manifest or folder entry -> example: `manifest.decode_entry` (what the pipeline's
  ManifestDecoder runs) + the line's annotations; `sync_frames` as `decode_entry`'s."""

  def __init__(self, m, d, random_crop: bool, sync_frames: tuple[int, int, int] | None = None):
    self.m, self.d, self.random_crop, self.sync_frames = m, d, random_crop, sync_frames

  def __call__(self, entry, rng):
    base = manifest.decode_entry(entry, rng, self.m, self.d, self.random_crop, self.sync_frames)
    return {**base, **annotation_features(json.loads(entry['annotations']), entry['where'])}


class _Convert:
  """index -> (index, example or None, skip message) of `items[index]`, with the generator
  np.random.default_rng([seed, index])."""

  def __init__(self, items, convert, seed: int, fail_fast: bool):
    self.items, self.convert, self.seed, self.fail_fast = items, convert, seed, fail_fast

  def __call__(self, index):
    rng = np.random.default_rng([self.seed, index])
    try:
      return index, self.convert(self.items[index], rng), ''
    except audio_io.BadSampleError as e:
      if self.fail_fast:
        raise
      return index, None, str(e)


# A pool worker's `_Convert`: set once by the initializer, so the items are not sent with
# every task.
_WORKER_CONVERT = []


def _start_worker(*args):
  _WORKER_CONVERT.append(_Convert(*args))


def _convert_in_worker(index):
  return _WORKER_CONVERT[0](index)


def convert_all(items, convert, seed: int, fail_fast: bool, workers: int):
  """Yields `_Convert` of every item in order, decoded by `workers` processes (0 = here)."""
  args = (items, convert, seed, fail_fast)
  if workers <= 0:
    yield from map(_Convert(*args), range(len(items)))
    return
  # spawn: forking a process that runs threads (JAX, grain, TFDS) can deadlock the child.
  with multiprocessing.get_context('spawn').Pool(workers, _start_worker, args) as pool:
    yield from pool.imap(_convert_in_worker, range(len(items)), chunksize=4)


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base examples (data/tasks.py) at fixed shapes, with IF-caps-Pro annotations."""
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Base examples with IF-caps-Pro annotations.'}

  def __init__(self, *, workers: int = 0, fail_fast: bool = False, progress: bool = False,
               sync_extractor=None, sync_batch: int = 8, **kwargs):
    """workers: decoding processes (0 = this one); fail_fast: stop at the first bad file
    instead of skipping it; progress: a progress bar per split on stderr; sync_extractor: for
    file sources, makes the sync features of video lines without a `sync_feature`, from the
    frames the workers read (`axturbo.generation.sync.SyncExtractor`: `fps`, `image_size`,
    `frames_for(seconds)`, frames (B, F, H, W, 3) -> (B, sync_len, sync_dim)), `sync_batch`
    videos at a time, in this process."""
    self.workers, self.fail_fast, self.progress = workers, fail_fast, progress
    self.sync_extractor, self.sync_batch = sync_extractor, sync_batch
    super().__init__(**kwargs)

  def _sources(self) -> dict:
    """{split: (source, items, convert(item, rng) -> example)} (subclasses); `source` names
    where the items come from, in errors."""
    raise NotImplementedError

  def _info(self):
    shapes = shapes_of(self.builder_config)
    return tfds.core.DatasetInfo(
        builder=self, description=f'{self.__doc__} {self.builder_config.description or ""}',
        features=tfds_source.features(shapes),
        metadata=tfds.core.MetadataDict(shapes=shapes, settings=settings_of(self.builder_config),
                                        skipped={}, skipped_messages={}, sync_computed={}),
        disable_shuffling=True)  # keep the source's order: the pipeline shuffles

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, source, items, convert)
            for split, (source, items, convert) in self._sources().items()}

  def _generate_examples(self, split, source, items, convert):
    from tqdm import tqdm
    seed = getattr(self.builder_config, 'seed', 0)
    bar = tqdm(total=len(items), desc=f'{self.name}/{self.builder_config.name} {split}',
               unit=' examples', disable=not self.progress)
    skipped, messages, synced = 0, [], 0
    stream = convert_all(items, convert, seed, self.fail_fast, self.workers)
    with bar:
      for batch in _batches(stream, lambda r: manifest.SYNC_FRAMES in (r[1] or {}),
                            self.sync_batch if self.sync_extractor is not None else 0):
        synced += self._fill_sync([example for _, example, _ in batch])
        for index, example, message in batch:
          bar.update()
          if message:
            skipped += 1
            messages += [message] if len(messages) < MAX_SKIP_MESSAGES else []
            logging.warning('prepare: skipped %s', message)
            bar.set_postfix(skipped=skipped)
            continue
          yield index, example
    if items and skipped == len(items):  # else TFDS's AssertionError: "No examples were yielded"
      raise ValueError(f'{source}: none of its {len(items)} file(s) could be read, nothing to '
                       f'build for the {split} split (first: {messages[0]})')
    self.info.metadata['skipped'][split] = skipped
    self.info.metadata['skipped_messages'][split] = messages
    self.info.metadata['sync_computed'][split] = synced

  def _fill_sync(self, examples) -> int:
    """Sets `sync` of the examples that carry SYNC_FRAMES from one extractor batch; returns how
    many."""
    need = [ex for ex in examples if ex is not None and manifest.SYNC_FRAMES in ex]
    if need:
      feats = self.sync_extractor(np.stack([ex.pop(manifest.SYNC_FRAMES) for ex in need]))
      for ex, f in zip(need, feats):
        ex['sync'] = f
    return len(need)


def _batches(stream, counts, size: int, max_items: int = 64):
  """Lists of consecutive `stream` items in order, cut after the `size`-th item for which
  `counts` is true, after `max_items` items (so few counted items hold back little) and at the
  end; size 0: one item a list."""
  batch, n = [], 0
  for item in stream:
    batch.append(item)
    n += bool(counts(item))
    if n >= size or len(batch) >= max_items:
      yield batch
      batch, n = [], 0
  if batch:
    yield batch


class _FilesBuilder(_Builder, skip_registration=True):
  """Builders of file sources: decoded by `FileExample`, sync features from the extractor."""

  def _file_example(self, split: str) -> FileExample:
    c = self.builder_config
    if bool(c.sync_checkpoint) != (self.sync_extractor is not None):
      raise ValueError(f'builder config sync_checkpoint={c.sync_checkpoint!r} needs '
                       f'{"an" if c.sync_checkpoint else "no"} extractor')
    m = model_view(shapes_of(c))
    sync_frames = None
    if self.sync_extractor is not None:
      ex = self.sync_extractor
      sync_frames = (ex.fps, ex.frames_for(m.video.num_frames / m.video_fps), ex.image_size)
    d = mlc.ConfigDict({'crop_grid_s': c.crop_grid_s})
    # As the pipeline: the random crop is for training only.
    return FileExample(m, d, c.random_crop and split == 'train', sync_frames)


class AxturboManifest(_FilesBuilder, skip_registration=True):
  """Official manifest lines (data/manifest.py), decoded as the training pipeline does."""

  def _sources(self):
    c = self.builder_config
    paths = {'train': c.manifest, 'heldout': c.heldout_manifest}
    return {split: (f'manifest {path}', manifest.read_manifest(path, c.root),
                    self._file_example(split))
            for split, path in paths.items() if path}


class AxturboFolder(_FilesBuilder, skip_registration=True):
  """Audio files captioned by same-named .txt files (data/manifest.py), text-to-audio."""

  def _sources(self):
    c = self.builder_config
    paths = {'train': c.folder, 'heldout': c.heldout_folder}
    return {split: (f'folder {path}', manifest.scan_folder(path), self._file_example(split))
            for split, path in paths.items() if path}


class AxturboEvents(_Builder, skip_registration=True):
  """The embedded procedural clips (data/embedded.py) with their annotations."""

  def _sources(self):
    c = self.builder_config
    m = model_view(shapes_of(c))
    sizes = {'train': c.num_clips, 'heldout': c.heldout_clips}
    probs = tuple(c.caption_probs) or None
    categories = embedded.category_filter(c.exclude_categories, c.require_categories,
                                          c.require_share)
    return {split: (f'embedded clips ({split})',
                    pipeline.EmbeddedSource(split, n, m, c.duration_s, probs, categories).clips,
                    EventsExample(m))
            for split, n in sizes.items() if n}


def builder_config(config, name: str, sync_checkpoint: str = '') -> ShapesConfig:
  """The builder config `name` of config.data's source ('embedded', or 'manifest': a .jsonl or
  a folder) at config.model's shapes; `sync_checkpoint`: where the extractor that makes missing
  sync features comes from (file sources only)."""
  m, d = config.model, config.data
  shapes = tfds_source.model_shapes(m)
  if d.source == 'embedded' and sync_checkpoint:
    raise ValueError('a Synchformer (--sync_checkpoint) makes sync features of video files: '
                     "config.data.source='embedded' has none to read")
  if d.source == 'embedded':
    duration = pipeline.embedded_duration(m, d)
    exclude, require, share = (embedded.category_filter(d.exclude_categories,
                                                        d.require_categories, d.require_share)
                               or ((), (), 1.0))
    return EventsConfig(name=name, num_clips=int(d.num_clips),
                        heldout_clips=int(d.heldout_clips), duration_s=duration,
                        caption_probs=embedded.caption_style_probs(d.caption_styles) or (),
                        exclude_categories=exclude, require_categories=require,
                        require_share=share,
                        description=f'{duration:g} s clips', **shapes)
  if d.source != 'manifest':
    raise ValueError(f"config.data.source={d.source!r}: a dataset is built from 'embedded' or "
                     "'manifest' (a .jsonl manifest or an audio folder)")
  if not d.manifest:
    raise ValueError("config.data.manifest must be set for source 'manifest'")
  files = dict(random_crop=bool(d.random_crop), crop_grid_s=float(d.crop_grid_s),
               seed=int(d.seed), sync_checkpoint=sync_checkpoint,
               description=f'from {d.manifest}', **shapes)
  if os.path.isdir(d.manifest):
    return FolderConfig(name=name, folder=d.manifest, heldout_folder=d.heldout_manifest, **files)
  return ManifestConfig(name=name, manifest=d.manifest, heldout_manifest=d.heldout_manifest,
                        root=d.root, **files)


BUILDERS = {EventsConfig: AxturboEvents, ManifestConfig: AxturboManifest,
            FolderConfig: AxturboFolder}


def make_builder(config, name: str, data_dir: str = '', **options) -> _Builder:
  """The builder of dataset `<builder>/<name>` under `data_dir` ('' = TFDS's default) from the
  axturbo `config` (`builder_config`); `options`: workers, fail_fast, progress, sync_extractor
  (its `source`, the checkpoint, is one of the dataset's settings), sync_batch."""
  extractor = options.get('sync_extractor')
  c = builder_config(config, name, extractor.source if extractor is not None else '')
  return BUILDERS[type(c)](config=c, data_dir=data_dir or None, file_format='array_record',
                           **options)


def build(config, name: str, data_dir: str = '', overwrite: bool = False, **options) -> _Builder:
  """Builds dataset `name` of `make_builder` and returns its builder. One already built from the
  same settings is kept; from other settings, it is refused unless `overwrite`."""
  builder = make_builder(config, name, data_dir, **options)
  if builder.is_prepared() and not overwrite:
    built = dict(builder.info.metadata.get('settings', {}))
    want = settings_of(builder.builder_config)
    # A setting added after a dataset was built reads as its default there (sync_checkpoint '').
    default = {f.name: f.default for f in dataclasses.fields(builder.builder_config)}
    built = {k: built.get(k, default.get(k)) for k in want}
    built = {k: tuple(v) if isinstance(v, list) else v for k, v in built.items()}  # from JSON
    differ = {k: (built[k], v) for k, v in want.items() if built[k] != v}
    if differ:
      raise ValueError(f'{builder.name}/{name} in {builder.data_dir} was built from other '
                       f'settings ({{setting: (built, asked)}}: {differ}); rebuild it with '
                       '--overwrite or choose another --name')
  mode = tfds.download.GenerateMode
  with _spill_without_tensorflow():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS))
  return builder


class _EpathGfile:
  """The part of TensorFlow that TFDS's shuffle buckets use (`tf.io.gfile`, `tf.errors`),
  on etils.epath, which reads and writes the same local and cloud paths."""

  class io:  # pylint: disable=invalid-name
    class gfile:  # pylint: disable=invalid-name
      GFile = staticmethod(lambda path, mode='r': epath.Path(path).open(mode))
      exists = staticmethod(lambda path: epath.Path(path).exists())
      remove = staticmethod(lambda path: epath.Path(path).unlink())

  class errors:  # pylint: disable=invalid-name
    class ResourceExhaustedError(OSError):
      message = ''


@contextlib.contextmanager
def _spill_without_tensorflow():
  """TFDS's writer holds a split in memory up to 1 GiB, then spills it to bucket files through
  `tf.io.gfile`: without TensorFlow a larger split (the tiny config's 4096 clips already) failed
  half-way with ModuleNotFoundError. Where TensorFlow is missing, the buckets use epath."""
  from tensorflow_datasets.core import shuffle
  if importlib.util.find_spec('tensorflow') is not None:
    yield
    return
  saved, shuffle.tf = shuffle.tf, _EpathGfile
  try:
    yield
  finally:
    shuffle.tf = saved


def summary(builder: _Builder) -> str:
  """What was built and skipped, and the config overrides that train on it."""
  info = builder.info
  name = f'{builder.name}/{builder.builder_config.name}'
  splits = ', '.join(f'{s.num_examples} {s.name}' for s in info.splits.values())
  skipped = info.metadata.get('skipped', {})
  # On disk: ArrayRecord compresses (info.dataset_size counts the uncompressed records).
  size = sum(f.stat().length for f in epath.Path(builder.data_dir).iterdir())
  synced = sum(info.metadata.get('sync_computed', {}).values())
  lines = [f'{name}: {splits} examples ({sum(skipped.values())} files skipped'
           f'{f", sync features of {synced} videos computed" if synced else ""}), '
           f'{size / 2**20:.1f} MiB in {builder.data_dir}']
  for split, messages in info.metadata.get('skipped_messages', {}).items():
    lines += [f'  skipped ({split}): {m}' for m in messages]
  root = epath.Path(builder.data_dir).parents[2]   # <root>/<builder>/<name>/<version>
  lines.append(f'train on it with: --config.data.source=tfds --config.data.tfds_name={name} '
               f'--config.data.tfds_data_dir={root}')
  return '\n'.join(lines)

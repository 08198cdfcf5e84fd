"""Training input pipeline: per-host, shuffled, checkpointable batches for train.py.

  it = make_iterator(config, split='train')        # grain DatasetIterator
  batch = next(it); state = it.get_state(); it.set_state(state); it.stats

Stages (grain MapDataset, so every element depends only on (seed, index)):
  source (embedded clips | manifest entries | base examples of a TFDS dataset on ArrayRecord)
  -> this host's slice [process_index::process_count]
  -> train: shuffle(seed) + repeat (reshuffled each epoch); heldout: one pass in order
  -> random_map: decode to a base example, pick the task (data/tasks.py), tokenize
  -> to_iter_dataset (reader threads), optional mp_prefetch (data.num_workers processes)
  -> `_Batch`: drops and counts bad samples, stacks per-host batches, pads the heldout tail.

Batch (b = data.batch_size // process_count; shapes from config.model):
  'audio' (b, audio_samples, 2) float32 in [-1, 1]; 'prompt' (b, prompt_samples, 2) float32
  (zeros = no prompt); 'input_ids', 'attention_mask' (b, text.max_length) int32;
  'frames' (b, video.num_frames, clip.image_size, clip.image_size, 3) uint8 (zeros = no video);
  'sync' (b, video.sync_len, video.sync_dim) float32; 'task' (b,) int32 (ids in data/tasks.py);
  'valid' (b,) bool (False only on padding rows of the heldout tail).
"""
import json
import math
import signal

from absl import flags
from absl import logging
import grain
import numpy as np

from axturbo.data import tokenizers
from axturbo.data import audio_io
from axturbo.data import embedded
from axturbo.data import manifest
from axturbo.data import tasks
from axturbo.data import tfds_source
from axturbo.data import video_io

SOURCES = ('embedded', 'manifest', 'tfds')
SPLITS = ('train', 'heldout')
DATA_FIELDS = (
    'source', 'batch_size', 'seed', 'shuffle', 'num_workers', 'read_threads', 'read_buffer',
    'fail_fast', 'max_skip_fraction', 'manifest', 'heldout_manifest', 'root', 'tfds_name',
    'tfds_data_dir', 'num_clips', 'heldout_clips', 'duration_s', 'task_probs', 'caption_styles',
    'exclude_categories', 'require_categories', 'require_share', 'random_crop', 'crop_grid_s',
    'phase_flip_p', 'inpaint_ratio', 'continuation_ratio')
# A train stream that fails this many samples in a row is broken, not noisy: stop.
MAX_CONSECUTIVE_SKIPS = 1000
# `data.max_skip_fraction` is judged only after this many samples (a fraction of 3 is noise).
MIN_SAMPLES_FOR_SKIP_FRACTION = 100
WORST_FILES = 5


class SkipLimitError(RuntimeError):
  """Too many samples failed to load: the data is broken, not noisy."""


def check_data_config(d, split: str = 'train') -> None:
  """Raises ValueError naming the config.data key that is unknown, missing or invalid."""
  keys = set(d.keys())
  unknown, missing = sorted(keys - set(DATA_FIELDS)), sorted(set(DATA_FIELDS) - keys)
  if unknown:
    raise ValueError(f'config.data has unknown keys {unknown}; known: {sorted(DATA_FIELDS)}')
  if missing:
    raise ValueError(f'config.data is missing keys {missing}')
  if d.source not in SOURCES:
    raise ValueError(f'config.data.source must be one of {SOURCES}, got {d.source!r}')
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  need = {'manifest': 'manifest' if split == 'train' else 'heldout_manifest',
          'tfds': 'tfds_name',
          'embedded': 'num_clips' if split == 'train' else 'heldout_clips'}[d.source]
  if not d[need]:
    raise ValueError(f'config.data.{need} must be set for source {d.source!r} '
                     f'(split {split!r})')
  if d.batch_size < 1:
    raise ValueError(f'config.data.batch_size must be >= 1, got {d.batch_size}')
  if not 0.0 <= d.phase_flip_p <= 1.0:
    raise ValueError(f'config.data.phase_flip_p must be in [0, 1], got {d.phase_flip_p}')
  for key in ('inpaint_ratio', 'continuation_ratio'):
    lo, hi = d[key]
    if not 0.0 < lo <= hi <= 1.0:
      raise ValueError(f'config.data.{key} must be (lo, hi) with 0 < lo <= hi <= 1, got '
                       f'{tuple(d[key])}')
  tasks.task_probabilities(d.task_probs)
  embedded.caption_style_probs(d.caption_styles)
  # Like caption_styles, they pick the embedded clips: a TFDS events dataset is made with them
  # (python -m data.prepare records them) and read as built; a manifest has no such clips.
  if embedded.category_filter(d.exclude_categories, d.require_categories, d.require_share) and (
      d.source == 'manifest'):
    raise ValueError("config.data.exclude_categories / require_categories pick the embedded "
                     "source's clips; source 'manifest' reads its files as listed")


def embedded_duration(m, d) -> float:
  """Clip length (s) of the embedded source: data.duration_s, or the longest multiple of 0.1 s
  that fits both audio_samples and prompt_samples (10 s in the official 11 s target)."""
  if d.duration_s:
    return float(d.duration_s)
  fits = min(m.audio_samples, m.prompt_samples) / m.sample_rate
  return math.floor(fits * 10 + 1e-9) / 10


class EmbeddedSource:
  """Random-access base examples of the procedural dataset (data/embedded.py), no files.

  `caption_probs` (`embedded.caption_style_probs`) weights the caption styles of the train
  split only, and `categories` (`embedded.category_filter`) picks its clips' categories:
  held-out clips keep the uniform mix and every category they are scored on.
  """

  def __init__(self, split, num_clips, m, duration_s, caption_probs=None, categories=None):
    if split != 'train':
      caption_probs, categories = None, None
    if duration_s * m.sample_rate > m.audio_samples:
      raise ValueError(f'config.data.duration_s={duration_s} s does not fit '
                       f'model.audio_samples={m.audio_samples} at {m.sample_rate} Hz')
    self.clips = embedded.EmbeddedDataset(split, num_clips, m.sample_rate, duration_s,
                                          fps=m.video_fps, video_size=m.clip.image_size,
                                          caption_probs=caption_probs, categories=categories)
    self.m = m

  def __len__(self):
    return len(self.clips)

  def __getitem__(self, index):
    return embedded_example(self.clips[index], self.m)


def embedded_example(clip: dict, m) -> dict:
  """The base example of an embedded clip (`embedded.make_clip`'s dict): every task open."""
  wave = clip['waveform']
  return {
      'audio': audio_io.pad_crop(wave, 0, m.audio_samples), 'length': np.int32(len(wave)),
      'frames': video_io.fit_length(clip['video'], m.video.num_frames),
      'has_video': np.bool_(True),
      'sync': np.zeros((m.video.sync_len, m.video.sync_dim), np.float32),
      'prompt': np.zeros((m.prompt_samples, 2), np.float32), 'has_prompt': np.bool_(False),
      'caption': clip['caption'], 'task': np.int32(-1),
  }


class ManifestDecoder:
  """Entry -> base example (decoding happens in the random_map, in reader threads/workers)."""

  def __init__(self, m, d, random_crop):
    self.m, self.d, self.random_crop = m, d, random_crop

  def __call__(self, entry, rng):
    return manifest.decode_entry(entry, rng, self.m, self.d, self.random_crop)


def base_source(config, split: str):
  """(random-access source, decode(item, rng) -> base example) for config.data.source."""
  m, d = config.model, config.data
  if d.source == 'embedded':
    num = d.num_clips if split == 'train' else d.heldout_clips
    return EmbeddedSource(split, num, m, embedded_duration(m, d),
                          embedded.caption_style_probs(d.caption_styles),
                          embedded.category_filter(d.exclude_categories,
                                                   d.require_categories,
                                                   d.require_share)), None
  if d.source == 'tfds':
    return tfds_source.TfdsSource(d.tfds_name, d.tfds_data_dir, split, m), None
  path = d.manifest if split == 'train' else d.heldout_manifest
  return manifest.load_entries(path, d.root), ManifestDecoder(m, d, d.random_crop and
                                                              split == 'train')


class MakeExample:
  """(item, rng) -> final example dict, or {'_skipped': message} for a bad sample."""

  def __init__(self, decode, tokenizer, d, train):
    self.decode, self.tokenizer, self.d = decode, tokenizer, d
    self.probs = tasks.task_probabilities(d.task_probs)
    self.task_args = dict(inpaint_ratio=tuple(d.inpaint_ratio),
                          continuation_ratio=tuple(d.continuation_ratio),
                          flip_p=d.phase_flip_p if train else 0.0)

  def __call__(self, item, rng):
    try:
      base = self.decode(item, rng) if self.decode else item
      ex = tasks.make_task_example(base, rng, self.probs, **self.task_args)
      audio_io.check_finite(ex['audio'], 'target audio', _where(item))
    except audio_io.BadSampleError as e:
      if self.d.fail_fast:
        raise
      return {'_skipped': str(e), '_where': _entry_name(item)}
    tok = self.tokenizer([ex.pop('caption')])
    ex.update(input_ids=tok.input_ids[0], attention_mask=tok.attention_mask[0],
              valid=np.bool_(True))
    return ex


def _entry_name(item) -> str:
  """'train.jsonl:4 /data/a.wav': the manifest line and its audio, for the worst-files list."""
  where = str(_where(item))
  path = item.get('path') if isinstance(item, dict) else None
  return f'{where} {path}' if path and str(path) != where else where


def _where(item):
  return item.get('where', 'example') if isinstance(item, dict) else 'example'


def empty_example(m) -> dict:
  """A zero example (valid=False) with the batch's per-row shapes: the heldout tail padding."""
  return {
      'audio': np.zeros((m.audio_samples, 2), np.float32),
      'prompt': np.zeros((m.prompt_samples, 2), np.float32),
      'frames': np.zeros((m.video.num_frames, m.clip.image_size, m.clip.image_size, 3),
                         np.uint8),
      'sync': np.zeros((m.video.sync_len, m.video.sync_dim), np.float32),
      'task': np.int32(0),
      'input_ids': np.zeros((m.text.max_length,), np.int32),
      'attention_mask': np.zeros((m.text.max_length,), np.int32),
      'valid': np.bool_(False),
  }


class _Batch(grain.IterDataset):
  """Drops and counts skipped samples, stacks `batch_size` rows; with `num_batches`, emits
  exactly that many batches, padding the tail with `empty` rows (valid=False). More than
  `max_skip_fraction` of the samples skipped (after MIN_SAMPLES_FOR_SKIP_FRACTION) stops the
  stream with a SkipLimitError naming the worst files."""

  def __init__(self, parent, batch_size, empty, num_batches=None, max_skip_fraction=1.0):
    super().__init__(parent)
    self.batch_size, self.empty, self.num_batches = batch_size, empty, num_batches
    self.max_skip_fraction = max_skip_fraction

  def __iter__(self):
    return _BatchIterator(self._parent.__iter__(), self.batch_size, self.empty,
                          self.num_batches, self.max_skip_fraction)


class _BatchIterator(grain.DatasetIterator):
  """Iterator of `_Batch`; `stats` = {'batches', 'seen', 'skipped', 'skip_fraction',
  'last_skipped', 'worst'} ('worst': {file: skips} of the most-skipped files)."""

  def __init__(self, parent, batch_size, empty, num_batches, max_skip_fraction):
    super().__init__(parent)
    self.batch_size, self.empty, self.num_batches = batch_size, empty, num_batches
    self.max_skip_fraction = max_skip_fraction
    self._batches, self._seen, self._skipped, self._last = 0, 0, 0, ''
    self._bad: dict[str, int] = {}

  @property
  def stats(self) -> dict:
    worst = dict(sorted(self._bad.items(), key=lambda kv: -kv[1])[:WORST_FILES])
    return {'batches': self._batches, 'seen': self._seen, 'skipped': self._skipped,
            'skip_fraction': self._skipped / max(self._seen, 1), 'last_skipped': self._last,
            'worst': worst}

  def _count_skip(self, ex) -> None:
    self._skipped += 1
    self._last = ex['_skipped']
    where = ex.get('_where', 'example')
    self._bad[where] = self._bad.get(where, 0) + 1
    if len(self._bad) > 4 * WORST_FILES:  # bounded: the state is checkpointed
      self._bad = dict(sorted(self._bad.items(), key=lambda kv: -kv[1])[:2 * WORST_FILES])
    logging.warning('data: skipped sample %d of %d: %s', self._skipped, self._seen,
                    ex['_skipped'])
    fraction = self._skipped / self._seen
    if self._seen >= MIN_SAMPLES_FOR_SKIP_FRACTION and fraction > self.max_skip_fraction:
      worst = ', '.join(f'{k} ({v}x)' for k, v in self.stats['worst'].items())
      raise SkipLimitError(
          f'{self._skipped} of {self._seen} samples ({100 * fraction:.0f} %) failed to load, '
          f'over config.data.max_skip_fraction={self.max_skip_fraction:g}; worst: {worst}; '
          f'last: {self._last}')

  def _next_example(self):
    run = 0
    while True:
      ex = next(self._parent)
      self._seen += 1
      if '_skipped' not in ex:
        return ex
      self._count_skip(ex)
      run += 1
      if run >= MAX_CONSECUTIVE_SKIPS:
        raise SkipLimitError(f'{run} samples in a row failed to load; last: {self._last}')

  def __next__(self):
    if self.num_batches is not None and self._batches >= self.num_batches:
      raise StopIteration
    rows = []
    for _ in range(self.batch_size):
      try:
        rows.append(self._next_example())
      except StopIteration:
        break
    if not rows and self.num_batches is None:
      raise StopIteration
    rows += [self.empty] * (self.batch_size - len(rows)) if self.num_batches is not None else []
    self._batches += 1
    return {k: np.stack([r[k] for r in rows]) for k in self.empty}

  def get_state(self):
    return {'parent': self._parent.get_state(), 'batches': self._batches, 'seen': self._seen,
            'skipped': self._skipped, 'last_skipped': self._last,
            'bad_files': json.dumps(self._bad)}

  def set_state(self, state):
    self._parent.set_state(state['parent'])
    self._batches, self._skipped = int(state['batches']), int(state['skipped'])
    self._last = str(state['last_skipped'])
    # States written before these counters existed: every earlier row was a sample seen.
    self._seen = int(state.get('seen', self._batches * self.batch_size + self._skipped))
    self._bad = json.loads(state.get('bad_files', '{}'))


class _HostRows(grain.MapDataset):
  """Rows [first, first + per_host) of every `global_batch` consecutive parent elements."""

  def __init__(self, parent, global_batch: int, first: int, per_host: int):
    super().__init__(parent)
    self._global, self._first, self._per_host = global_batch, first, per_host

  def __len__(self) -> int:
    return len(self._parent) // self._global * self._per_host

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._per_host)
    return self._parent[batch * self._global + self._first + row]


def _host(process_index, process_count):
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return int(process_index), int(process_count)


def make_dataset(config, *, split='train', process_index=None, process_count=None,
                 seed=None) -> grain.IterDataset:
  """The per-host IterDataset behind `make_iterator` (same arguments)."""
  m, d = config.model, config.data
  check_data_config(d, split)
  index, count = _host(process_index, process_count)
  if d.batch_size % count:
    raise ValueError(f'config.data.batch_size={d.batch_size} is not divisible by the '
                     f'{count} processes')
  per_host = d.batch_size // count
  seed = int(d.seed if seed is None else seed)
  source, decode = base_source(config, split)
  total = len(source)
  if total < count:
    raise ValueError(f'{split} split has {total} examples, fewer than {count} processes')
  train = split == 'train'
  ds = grain.MapDataset.source(source).seed(seed)
  make = MakeExample(decode, tokenizers.build_tokenizer(m.text), d, train)
  num_batches = None
  if train:
    # One global stream (order and per-example randomness by global position), cut into
    # global batches whose rows are dealt to hosts: the same global batches for any host count.
    ds = (ds.shuffle() if d.shuffle else ds).repeat(None).random_map(make)
    ds = _HostRows(ds, d.batch_size, index * per_host, per_host)
  else:
    # Every host runs the same number of eval steps (the largest shard decides).
    ds = ds[index::count].random_map(make)
    num_batches = math.ceil(math.ceil(total / count) / per_host)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads,
                                            prefetch_buffer_size=d.read_buffer))
  if d.num_workers > 0:
    # grain reads absl flags in its workers; outside absl.app.run (notebooks, tests) they are
    # unparsed, so take their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers),
                        worker_init_fn=_ignore_ctrl_c)
  return _Batch(ds, per_host, empty_example(m), num_batches,
                max_skip_fraction=d.max_skip_fraction if train else 1.0)


def _ignore_ctrl_c(worker_index: int, worker_count: int) -> None:
  """Ctrl-C in a terminal reaches every process of the group: the decoding workers leave it to
  the main process (which saves and stops them) instead of printing a traceback each."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_iterator(config, *, split='train', process_index=None, process_count=None,
                  seed=None):
  """Checkpointable per-host batch iterator (module docstring); defaults: jax.process_*(),
  config.data.seed. Restoring `get_state()` into a fresh iterator replays the same batches."""
  return iter(make_dataset(config, split=split, process_index=process_index,
                           process_count=process_count, seed=seed))

"""Embedded procedural dataset: audio, video, IF-caps-Pro-like annotations, audio prompts.

A clip holds 1-5 non-overlapping events drawn from `events.CATEGORIES` (1-5
distinct categories, each occurring 1-5 times). Event times lie on a 0.1 s grid;
the clip is cut into equal slots, one event per slot, so consecutive events are
>= 0.2 s apart and the temporal order is unambiguous. Silence outside events is
exactly zero.

Held-out split: the SET of categories of a clip decides its split
(`combination_split`, a salted SHA-256 of the sorted names, 1 in HELDOUT_MODULUS
sets held out). Every caption names exactly the clip's categories and no other,
so no held-out caption can equal a training caption.

Everything about a clip except the rendering resolution depends only on
(seed, split): the same seed gives the same events and captions at 16 kHz and
44.1 kHz and at any video size.
"""
import functools
import hashlib
import itertools

import numpy as np

from axturbo.data import event_sounds as ev
from axturbo.data import event_video

SPLITS = ('train', 'heldout')
TIME_STEP_S = 0.1
MAX_EVENTS = 5
HELDOUT_MODULUS = 5
HELDOUT_SALT = 'axturbo-heldout-v1'
CAPTION_STYLES = ('category', 'count', 'order', 'timestamp')
_NUMBERS = ('one', 'two', 'three', 'four', 'five')
_TIMES = ('once', 'twice', 'three times', 'four times', 'five times')


def combination_split(categories):
  """'heldout' or 'train' for a collection of category names (order/repeats ignored)."""
  key = HELDOUT_SALT + ':' + '|'.join(sorted(set(categories)))
  digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], 'big')
  return 'heldout' if digest % HELDOUT_MODULUS == 0 else 'train'


@functools.lru_cache(maxsize=None)
def allowed_sets(split, size):
  """Sorted category tuples of `size` distinct categories that belong to `split`."""
  combos = itertools.combinations(sorted(ev.CATEGORIES), size)
  return tuple(c for c in combos if combination_split(c) == split)


@functools.lru_cache(maxsize=None)
def category_sets(split, size, exclude=(), require=()):
  """`allowed_sets(split, size)` without the `exclude` categories and, when `require` names
  some, only the sets that hold at least one of them."""
  return tuple(s for s in allowed_sets(split, size)
               if not set(s) & set(exclude) and (not require or set(s) & set(require)))


def category_filter(exclude=(), require=(), share=1.0) -> tuple[tuple, tuple, float] | None:
  """(data.exclude_categories, data.require_categories, data.require_share) checked, the
  categories sorted; None when both lists are empty (clips then keep their original draw).
  `share`: the fraction of clips drawn with `require`, in (0, 1]; the others hold none of
  `exclude` and may hold any other category (a fine-tune that also replays ordinary clips)."""
  exclude, require, share = tuple(sorted(set(exclude))), tuple(sorted(set(require))), float(share)
  for name, cats in (('exclude_categories', exclude), ('require_categories', require)):
    unknown = [c for c in cats if c not in ev.CATEGORIES]
    if unknown:
      raise ValueError(f'data.{name}: unknown categories {unknown}; known: {ev.CATEGORIES}')
  if set(exclude) & set(require):
    raise ValueError(f'data.exclude_categories and data.require_categories share '
                     f'{sorted(set(exclude) & set(require))}')
  if not 0 < share <= 1 or (share < 1 and not require):
    raise ValueError(f'data.require_share={share:g}: must be in (0, 1], and below 1 only with '
                     'data.require_categories')
  if not exclude and not require:
    return None
  if not any(category_sets('train', k, exclude, require) for k in range(1, MAX_EVENTS + 1)):
    raise ValueError(f'data.exclude_categories={list(exclude)} and data.require_categories='
                     f'{list(require)} leave no training clip')
  return exclude, require, share


def _sample_events(rng, split, total_ticks, max_events, categories=None):
  """List of (category, start_tick, end_tick), sorted by time. `categories`: None, or the
  (exclude, require, share) of `category_filter`: the event and category counts are then drawn
  among those that some allowed category set fits (`require` in a `share` of the clips)."""
  most = min(max_events, total_ticks // 5)
  if categories is not None:
    exclude, require, share = categories
    if share < 1 and rng.random() >= share:
      require = ()
    categories = (exclude, require)
  if categories is None:
    n = int(rng.integers(1, most + 1))
    k = int(rng.integers(1, n + 1))
    options = allowed_sets(split, k)
  else:
    fits = [k for k in range(1, most + 1) if category_sets(split, k, *categories)]
    if not fits:
      raise ValueError(f'no {split} clip of <= {most} events fits the categories {categories}')
    n = int(rng.integers(fits[0], most + 1))
    sizes = [k for k in fits if k <= n]
    k = sizes[int(rng.integers(len(sizes)))]
    options = category_sets(split, k, *categories)
  cats = list(options[rng.integers(len(options))])
  rng.shuffle(cats)
  cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False))
  counts = np.diff(np.concatenate([[0], cuts, [n]]))
  sequence = [c for c, m in zip(cats, counts) for _ in range(m)]
  rng.shuffle(sequence)
  slot = total_ticks // n
  out = []
  for i, cat in enumerate(sequence):
    length = int(rng.integers(max(3, slot // 4), slot - 2 + 1))
    offset = int(rng.integers(1, slot - 1 - length + 1))
    out.append((cat, i * slot + offset, i * slot + offset + length))
  return out


def _fmt(tick):
  return f'{tick * TIME_STEP_S:.1f}'


def _join(items):
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def _plural(word, count):
  return word if count == 1 else word + 's'


def _captions(evts, rng):
  """{style: caption} built from templates; template choices come from rng."""
  seq = [c for c, _, _ in evts]
  counts = {c: seq.count(c) for c in dict.fromkeys(seq)}
  names = list(counts)
  rng.shuffle(names)
  t = [int(rng.integers(3)) for _ in CAPTION_STYLES]
  category = (
      f'The audio includes {_join([n + " sounds" for n in names])}.',
      f'Sounds of {_join(names)}.',
      f'A recording featuring {_join(names)}.',
  )[t[0]]
  count = (
      'The audio contains ' + _join(
          [f'{_NUMBERS[m - 1]} {n} {_plural("sound", m)}' for n, m in counts.items()]) + '.',
      'We hear ' + _join([f'{n} {_TIMES[m - 1]}' for n, m in counts.items()]) + '.',
      'This audio contains ' + _join(
          [f'{_NUMBERS[m - 1]} {_plural("instance", m)} of {n}' for n, m in counts.items()]) + '.',
  )[t[1]]
  if len(seq) == 1:
    order = (f'A single {seq[0]} sound.', f'Only {seq[0]} is heard, once.',
             f'Just one {seq[0]} event.')[t[2]]
  else:
    order = ('First ' + ', then '.join(seq) + '.',
             ' followed by '.join(seq).capitalize() + '.',
             ' and next '.join(seq).capitalize() + '.')[t[2]]
  stamp = (
      '; '.join(f'between {_fmt(s)}s and {_fmt(e)}s, {c}' for c, s, e in evts),
      ', '.join(f'{c} from {_fmt(s)} to {_fmt(e)} seconds' for c, s, e in evts),
      ' '.join(f'[{_fmt(s)}s-{_fmt(e)}s] {c}.' for c, s, e in evts),
  )[t[3]]
  stamp = stamp[0].upper() + stamp[1:] + ('' if stamp.endswith('.') else '.')
  return dict(zip(CAPTION_STYLES, (category, count, order, stamp)))


def caption_vocabulary(max_duration_s: float = 10.0) -> tuple[str, ...]:
  """Every word token (`tokenizers.split_words`) that a caption of a clip of at most
  `max_duration_s` can contain, sorted: the closed vocabulary of a word-level text encoder.

  Found by running the caption templates on event lists that reach every template branch
  (1-5 events, counts 1-5, every category), plus every time stamp on the 0.1 s grid.
  """
  from axturbo.data import tokenizers  # the library's tokenizer defines what a word is
  rng = np.random.default_rng(0)
  words = set()
  for _ in range(400):
    n = int(rng.integers(1, MAX_EVENTS + 1))
    cats = list(rng.choice(ev.CATEGORIES, size=int(rng.integers(1, n + 1)), replace=False))
    seq = cats + list(rng.choice(cats, size=n - len(cats)))
    evts = [(str(c), i, i + 1) for i, c in enumerate(seq)]
    for caption in _captions(evts, rng).values():
      words.update(tokenizers.split_words(caption))
  ticks = int(round(max_duration_s / TIME_STEP_S))
  words.update(_fmt(t) for t in range(ticks + 1))
  for phrase in (*_NUMBERS, *_TIMES, *ev.CATEGORIES):
    words.update(tokenizers.split_words(phrase))
  return tuple(sorted(words))


def _to_samples(tick, sample_rate):
  return int(round(tick * TIME_STEP_S * sample_rate))


def _validate(seed, split, sample_rate, duration_s, fps, max_events, fraction):
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  if int(seed) != seed or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
  if sample_rate < ev.MIN_SAMPLE_RATE:
    raise ValueError(f'sample_rate must be >= {ev.MIN_SAMPLE_RATE}, got {sample_rate}')
  ticks = int(round(duration_s / TIME_STEP_S))
  if ticks < 5 or abs(ticks * TIME_STEP_S - duration_s) > 1e-6:
    raise ValueError(f'duration_s must be a multiple of {TIME_STEP_S} s and >= 0.5, '
                     f'got {duration_s}')
  if int(fps) != fps or fps < 1:
    raise ValueError(f'fps must be a positive integer, got {fps}')
  if not 1 <= max_events <= MAX_EVENTS:
    raise ValueError(f'max_events must be in [1, {MAX_EVENTS}], got {max_events}')
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'continuation_fraction must be in (0, 1), got {fraction}')
  return ticks


def caption_style_probs(weights) -> tuple[float, ...] | None:
  """{style: weight} (data.caption_styles) -> probabilities in CAPTION_STYLES order, or None
  when uniform: make_clip then keeps its original draw, so uniform clips stay bit-identical."""
  weights = dict(weights)
  unknown = sorted(set(weights) - set(CAPTION_STYLES))
  if unknown:
    raise ValueError(f'data.caption_styles: unknown styles {unknown}; known: {CAPTION_STYLES}')
  w = np.array([weights.get(s, 0.0) for s in CAPTION_STYLES], np.float64)
  if not (np.all(w >= 0) and w.sum() > 0):
    raise ValueError(f'data.caption_styles must be weights >= 0 with a positive sum, got '
                     f'{weights}')
  if np.all(w == w[0]):
    return None
  return tuple(float(x) for x in w / w.sum())


def make_clip(seed, split='train', sample_rate=16000, duration_s=4.0, fps=5,
              video_size=32, caption_style=None, max_events=MAX_EVENTS,
              continuation_fraction=0.5, caption_probs=None, categories=None):
  """Builds one deterministic clip (see the module docstring).

  Args:
    seed: non-negative integer; with `split` it fixes everything about the clip.
    split: 'train' or 'heldout'.
    sample_rate: Hz, >= 16000.
    duration_s: multiple of 0.1 s, >= 0.5 s (5 events need >= 2.5 s).
    fps: integer video frame rate.
    video_size: frame height = width (pixels), >= 8.
    caption_style: None (drawn from CAPTION_STYLES) or one of CAPTION_STYLES.
    caption_probs: None (uniform) or the probabilities of CAPTION_STYLES when drawn
      (`caption_style_probs`).
    categories: None, or (exclude, require, share) from `category_filter`: the clip holds
      none of `exclude` and, when `require` names some, at least one of them (in a `share`
      of the seeds).
    max_events: upper bound on the number of events, in [1, 5].
    continuation_fraction: length of the continuation prompt / duration.

  Returns:
    dict with 'waveform' (N, 2) float32, N = duration_s * sample_rate;
    'video' (F, video_size, video_size, 3) uint8, F = ceil(duration_s * fps);
    'events' [(category, start_s, end_s)]; 'event_samples' (E, 2) int64 [start, end);
    'caption', 'caption_style', 'captions' {style: caption};
    'annotations' {'caption', 'category': {name: count}, 'SED': [[name, s, e]],
    'time_relation': [names in temporal order]};
    'inpaint_waveform' (N, 2) with [s, e) zeroed, 'inpaint_span' (2,) int64 samples,
    'inpaint_span_s' (2,) float64; 'continuation_prompt' (M, 2), 'continuation_s';
    and the arguments 'seed', 'split', 'sample_rate', 'duration_s', 'fps'.
  """
  ticks = _validate(seed, split, sample_rate, duration_s, fps, max_events,
                    continuation_fraction)
  if caption_style is not None and caption_style not in CAPTION_STYLES:
    raise ValueError(f'caption_style must be None or one of {CAPTION_STYLES}')
  if caption_probs is not None and (len(caption_probs) != len(CAPTION_STYLES)
                                    or not np.isclose(sum(caption_probs), 1.0)
                                    or min(caption_probs) < 0):
    raise ValueError(f'caption_probs must be {len(CAPTION_STYLES)} probabilities summing to 1, '
                     f'got {caption_probs}')
  seq = np.random.SeedSequence([int(seed), SPLITS.index(split), 0xA0D10])
  r_events, r_audio, r_video, r_text, r_prompt = (
      np.random.default_rng(s) for s in seq.spawn(5))
  evts = _sample_events(r_events, split, ticks, max_events, categories)
  n = _to_samples(ticks, sample_rate)
  bounds = np.array([[_to_samples(s, sample_rate), _to_samples(e, sample_rate)]
                     for _, s, e in evts], np.int64)
  wave = np.zeros((n, 2), np.float32)
  for (cat, _, _), (s, e) in zip(evts, bounds):
    wave[s:e] = ev.render_event(cat, int(e - s), sample_rate, r_audio)
  frames = event_video.render_video(evts, ticks, int(fps), video_size, r_video, TIME_STEP_S)
  captions = _captions(evts, r_text)
  if caption_style:
    style = caption_style
  elif caption_probs is None:
    style = CAPTION_STYLES[int(r_text.integers(len(CAPTION_STYLES)))]
  else:
    style = CAPTION_STYLES[int(r_text.choice(len(CAPTION_STYLES), p=caption_probs))]
  span_len = int(r_prompt.integers(max(1, ticks // 5), max(1, 2 * ticks // 5) + 1))
  span_start = int(r_prompt.integers(0, ticks - span_len + 1))
  span = np.array([_to_samples(span_start, sample_rate),
                   _to_samples(span_start + span_len, sample_rate)], np.int64)
  inpaint = wave.copy()
  inpaint[span[0]:span[1]] = 0.0
  cont_ticks = max(1, int(round(continuation_fraction * ticks)))
  seq_names = [c for c, _, _ in evts]
  return {
      'seed': int(seed), 'split': split, 'sample_rate': int(sample_rate),
      'duration_s': float(_fmt(ticks)), 'fps': int(fps),
      'events': [(c, float(_fmt(s)), float(_fmt(e))) for c, s, e in evts],
      'event_samples': bounds,
      'waveform': wave,
      'video': frames,
      'caption': captions[style], 'caption_style': style, 'captions': captions,
      'annotations': {
          'caption': captions[style],
          'category': {c: seq_names.count(c) for c in dict.fromkeys(seq_names)},
          'SED': [[c, float(_fmt(s)), float(_fmt(e))] for c, s, e in evts],
          'time_relation': seq_names,
      },
      'inpaint_waveform': inpaint, 'inpaint_span': span,
      'inpaint_span_s': np.array([float(_fmt(span_start)), float(_fmt(span_start + span_len))]),
      'continuation_prompt': wave[:_to_samples(cont_ticks, sample_rate)].copy(),
      'continuation_s': float(_fmt(cont_ticks)),
  }


class EmbeddedDataset:
  """Indexable dataset: item i is make_clip(seed_offset + i, split, **clip_kwargs).

  Items are dicts of NumPy arrays, strings and small Python containers, suitable
  for a grain RandomAccessDataSource (`__len__`/`__getitem__`).
  """

  def __init__(self, split='train', num_clips=1000, sample_rate=16000, duration_s=4.0,
               seed_offset=0, **clip_kwargs):
    if num_clips < 0:
      raise ValueError(f'num_clips must be >= 0, got {num_clips}')
    self.split = split
    self.num_clips = int(num_clips)
    self.seed_offset = int(seed_offset)
    self.clip_kwargs = dict(sample_rate=sample_rate, duration_s=duration_s, **clip_kwargs)
    _validate(self.seed_offset, split, sample_rate, duration_s,
              self.clip_kwargs.get('fps', 5), self.clip_kwargs.get('max_events', MAX_EVENTS),
              self.clip_kwargs.get('continuation_fraction', 0.5))

  def __len__(self):
    return self.num_clips

  def __getitem__(self, index):
    index = int(index)
    if index < 0:
      index += self.num_clips
    if not 0 <= index < self.num_clips:
      raise IndexError(f'index {index} out of range for {self.num_clips} clips')
    return make_clip(self.seed_offset + index, self.split, **self.clip_kwargs)

  def __iter__(self):
    return (self[i] for i in range(self.num_clips))

"""Event benchmark on the embedded held-out split: instruction following, sync, inpainting.

Each held-out clip (`axturbo.data.embedded`, combinations of categories never seen in
training) yields one generation *request* per task:
  t2a           text only: the clip's caption, whose `caption_style` (category, count, order,
                timestamp) is the T2A-bench task type of the prompt.
  v2a           video only (empty text): the clip's synthetic video; zero Synchformer features
                (the embedded data has none; the video is the only timing cue).
  tv2a          caption + video.
  inpaint       caption + the clip with its `inpaint_span` zeroed; the span is regenerated.
  continuation  caption + the clip's first part (`continuation_prompt`); the output is the whole
                clip.
A *generator* maps requests to waveforms; swapping the model for the clips' own waveforms
(`reference_generator`) or silence checks the scoring path end to end.

Scoring (every output is annotated blindly by `event_detector.detect_events`, then judged against the
clip's annotations with `event_scores.score_clip`; all values are fractions in [0, 1]):
  cat, count, order, timestamp   t2a: T2A-bench Cat/Cnt/Ord/TS-acc; Cat over every clip, the
                                 others over the clips whose caption style asks for them.
  sync_v2a, sync_tv2a            `event_scores.video_sync(...)['synced']`: every shape's sound
                                 starts when the shape appears and no other sound is heard.
  inpaint, continuation          the whole output passes all four judgments (Cat and Cnt and
                                 Ord and TS) against the clip's annotations.
  inpaint_region,                the regenerated region alone: the annotated events overlapping
  continuation_region            it (by > REGION_MARGIN_S) are exactly the detected events
                                 overlapping it, each matched in category and timing (TS rule).
"""
import dataclasses
import math
import types
from typing import Callable, Mapping, Sequence

import numpy as np

from axturbo.data import embedded
from axturbo.data import event_sounds as ev
from axturbo.data import pipeline
from axturbo.eval import event_scores
from axturbo.eval import event_detector
from axturbo.generation import longform
from axturbo.generation.request import InputOptions
from axturbo.generation.request import LongOptions
from axturbo.generation.request import Request as GenerationRequest
from axturbo.generation.request import SamplerOptions

TASKS = ('t2a', 'v2a', 'tv2a', 'inpaint', 'continuation')
REGION_MARGIN_S = 0.05
# Headline metrics: key -> (task that produces it, table header).
METRICS = {
    'cat': ('t2a', 'Cat'), 'count': ('t2a', 'Cnt'), 'order': ('t2a', 'Ord'),
    'timestamp': ('t2a', 'TS'), 'sync_v2a': ('v2a', 'Sync V2A'),
    'sync_tv2a': ('tv2a', 'Sync TV2A'), 'inpaint': ('inpaint', 'Inp'),
    'inpaint_region': ('inpaint', 'Inp region'), 'continuation': ('continuation', 'Cont'),
    'continuation_region': ('continuation', 'Cont region'),
}


@dataclasses.dataclass
class Request:
  """One generation of the benchmark: `inputs` are `axturbo.generation.Request` fields
  (`model_generator` makes the Request)."""
  task: str
  clip: int
  inputs: dict


# A generator maps requests to (N, 2) float32 waveforms at the benchmark's sample rate.
GenerateFn = Callable[[Sequence[Request]], list]


def clip_duration(m) -> float:
  """Seconds of the held-out clips for model config `m` (as the training pipeline)."""
  return pipeline.embedded_duration(m, types.SimpleNamespace(duration_s=None))


def heldout_clips(m, num_clips: int, duration_s: float | None = None, first: int = 0
                  ) -> list[dict]:
  """`num_clips` held-out clips from number `first` on, at the model's rate, video fps and
  frame size (tune a setting on some clips, report it on others: `--first_clip`)."""
  if num_clips < 1:
    raise ValueError(f'--clips must be >= 1, got {num_clips}')
  if first < 0:
    raise ValueError(f'--first_clip must be >= 0, got {first}')
  duration = duration_s or clip_duration(m)
  return [embedded.make_clip(i, 'heldout', sample_rate=m.sample_rate, duration_s=duration,
                             fps=m.video_fps, video_size=m.clip.image_size)
          for i in range(first, first + num_clips)]


def make_requests(clips: Sequence[dict], tasks: Sequence[str] = TASKS,
                  clips_per_task: Mapping[str, int] | None = None) -> list[Request]:
  """Requests grouped by task (same input structure, hence the same compiled shapes), each
  task over the first `clips_per_task[task]` clips (default: all). T2A needs more than the
  others: its Cnt, Ord and TS each judge only the clips whose caption asks for them."""
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise ValueError(f'--tasks: unknown {unknown}; known: {list(TASKS)}')
  counts = {t: len(clips) for t in tasks} | dict(clips_per_task or {})
  for t in tasks:
    if not 1 <= counts[t] <= len(clips):
      raise ValueError(f'{t}: {counts[t]} clips asked, {len(clips)} made')
  build = {
      't2a': lambda c: {'text': c['caption']},
      'v2a': lambda c: {'text': '', 'video': c['video']},
      'tv2a': lambda c: {'text': c['caption'], 'video': c['video']},
      'inpaint': lambda c: {'text': c['caption'], 'audio': c['waveform'],
                            'inpaint': tuple(float(x) for x in c['inpaint_span_s'])},
      'continuation': lambda c: {'text': c['caption'], 'audio': c['continuation_prompt'],
                                 'continuation': True},
  }
  return [Request(t, i, build[t](c)) for t in tasks for i, c in enumerate(clips[:counts[t]])]


# ---------------------------------------------------------------------------- generators

def model_generator(gen, options: SamplerOptions, *, batch_size: int = 8,
                    keep_unmasked: bool = False, progress=None,
                    long: LongOptions | None = None) -> GenerateFn:
  """Runs `gen.generate` over requests, `batch_size` at a time, with sampler `options`.

  Clip i of every task uses noise seed `options.seed + i`, whatever the batch size (the
  requests of a task must come in clip order, as `make_requests` builds them). A short last
  batch is padded with copies of its last request so every call has the same compiled shape.
  Inpainting prompts are right-padded to the prompt length, so that the span stays on the
  clip's timeline (as in training, `data.tasks.inpaint_prompt`); continuation prompts are
  left-padded (the official convention, also used in training).
  `progress`: an object with `update(n)` (a tqdm bar), or None.
  Long clips (`axturbo.eval.long_clips`): a task whose requests carry 'duration_s' is generated
  window by window (`longform.generate_long` with `long`), its text from 'segments' when they
  carry them.
  """
  if batch_size < 1:
    raise ValueError(f'--batch_size must be >= 1, got {batch_size}')

  def run(requests):
    waves = [None] * len(requests)
    by_task = {}
    for k, r in enumerate(requests):
      by_task.setdefault(r.task, []).append(k)
    for task, idx in by_task.items():
      size = min(batch_size, len(idx))
      inputs = InputOptions(allow_unconditional=True,
                            prompt_pad='right' if task == 'inpaint' else 'left')
      for start in range(0, len(idx), size):
        chunk = idx[start:start + size]
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        reqs = [_generation_request(gen.config, requests[k].inputs,
                                    keep_unmasked=keep_unmasked and task in ('inpaint',
                                                                             'continuation'))
                for k in padded]
        opts = dataclasses.replace(options, seed=options.seed + requests[chunk[0]].clip)
        if reqs[0].duration_s is None:
          results = gen.generate(reqs, opts, inputs=inputs)
        else:
          results = longform.generate_long(gen, reqs, opts, long=long, inputs=inputs)
        for k, res in zip(chunk, results):
          waves[k] = res.waveform
        if progress is not None:
          progress.update(len(chunk))
    return waves
  return run


def _generation_request(m, inputs: dict, *, keep_unmasked: bool) -> GenerationRequest:
  """A benchmark request's `inputs` -> the `axturbo.generation.Request` to generate."""
  long = inputs.get('duration_s') is not None
  return GenerationRequest(
      text='' if inputs.get('segments') is not None else inputs['text'],
      video=inputs.get('video'), audio=inputs.get('audio'), inpaint=inputs.get('inpaint'),
      # long clips: no features means zeros per window
      sync=(inputs.get('sync') if long else _sync(m, inputs.get('video'), inputs.get('sync'))),
      continuation=bool(inputs.get('continuation')), keep_unmasked=keep_unmasked,
      duration_s=inputs.get('duration_s'), segments=inputs.get('segments'))


def _sync(m, video, sync):
  """Zero Synchformer features for in-memory videos (file videos look up their own)."""
  if video is None or sync is not None or isinstance(video, (str, bytes)) or hasattr(
      video, '__fspath__'):
    return sync
  return np.zeros((m.video.sync_len, m.video.sync_dim), np.float32)


def reference_generator(clips: Sequence[dict]) -> GenerateFn:
  """Returns every request's own clip: the perfect generator (scores ~1)."""
  return lambda requests: [clips[r.clip]['waveform'] for r in requests]


def silence_generator(clips: Sequence[dict]) -> GenerateFn:
  """Returns all-zero clips (scores ~0)."""
  return lambda requests: [np.zeros_like(clips[r.clip]['waveform']) for r in requests]


# ---------------------------------------------------------------------------- scoring

def _overlaps(start: float, end: float, lo: float, hi: float) -> bool:
  return min(end, hi) - max(start, lo) > REGION_MARGIN_S


def region_ok(detected, sed, lo: float, hi: float) -> bool:
  """Do the detected events overlapping [lo, hi) s match the annotated ones there exactly?"""
  ref = [(c, float(s), float(e)) for c, s, e in sed if _overlaps(float(s), float(e), lo, hi)]
  det = [d for d in detected if _overlaps(d[1], d[2], lo, hi)]
  names = [c for c, _, _ in ref]
  annotations = {'category': {c: names.count(c) for c in dict.fromkeys(names)},
                 'SED': ref, 'time_relation': names}
  s = event_scores.score_clip(det, annotations)
  return bool(s['cat_exact'] and s['count'] and s['order'] and s['timestamp'])


def score_request(request: Request, wave, clip: dict, sample_rate: int) -> dict:
  """Detected events and binary judgments of one output."""
  detected = event_detector.detect_events(np.asarray(wave, np.float32), sample_rate)
  scores = event_scores.score_clip(detected, clip['annotations'])
  if request.task in ('v2a', 'tv2a'):
    sync = event_scores.video_sync(detected, clip['video'], clip['fps'])
    scores.update(sync=bool(sync['synced']), sync_recall=sync['recall'],
                  sync_precision=sync['precision'])
  if request.task in ('inpaint', 'continuation'):
    scores['all'] = all(scores[k] for k in ('cat', 'count', 'order', 'timestamp'))
    if request.task == 'inpaint':
      lo, hi = (float(x) for x in clip['inpaint_span_s'])
    else:
      lo, hi = clip['continuation_s'], clip['duration_s']
    scores['region'] = region_ok(detected, clip['annotations']['SED'], lo, hi)
  return {'task': request.task, 'clip': request.clip, 'caption_style': clip['caption_style'],
          'detected': [[c, round(s, 3), round(e, 3)] for c, s, e in detected],
          'scores': {k: (bool(v) if isinstance(v, (bool, np.bool_)) else float(v))
                     for k, v in scores.items()}}


def _mean(values) -> float | None:
  values = list(values)
  return float(np.mean(values)) if values else None


def summarize(records: Sequence[dict]) -> tuple[dict, dict, dict]:
  """(metrics, num_clips, details) from `score_request` records.

  metrics / num_clips: METRICS key -> fraction in [0, 1] (None without clips) / clips used.
  details: task -> every judgment averaged over the task's clips (T2A: '<key>_all' too).
  """
  by_task = {}
  for rec in records:
    by_task.setdefault(rec['task'], []).append(rec)
  metrics, counts, details = {}, {}, {}
  t2a = by_task.get('t2a', [])
  if t2a:
    agg = event_scores.aggregate([r['scores'] for r in t2a], [r['caption_style'] for r in t2a])
    details['t2a'] = {k: None if math.isnan(v) else v / 100.0 for k, v in agg.items()}
    for key in ('cat', 'count', 'order', 'timestamp'):
      metrics[key] = details['t2a'][key]
      asks = [r for r in t2a if key == 'cat' or
              event_scores.STYLE_METRIC.get(r['caption_style']) == key]
      counts[key] = len(asks)
  for task, key_map in (('v2a', {'sync_v2a': 'sync'}), ('tv2a', {'sync_tv2a': 'sync'}),
                        ('inpaint', {'inpaint': 'all', 'inpaint_region': 'region'}),
                        ('continuation', {'continuation': 'all',
                                          'continuation_region': 'region'})):
    recs = by_task.get(task, [])
    if not recs:
      continue
    details[task] = {k: _mean(float(r['scores'][k]) for r in recs) for k in recs[0]['scores']}
    for key, judgment in key_map.items():
      metrics[key] = details[task][judgment]
      counts[key] = len(recs)
  return metrics, counts, details


def run_events(clips: Sequence[dict], generate_fn: GenerateFn, sample_rate: int,
               tasks: Sequence[str] = TASKS,
               clips_per_task: Mapping[str, int] | None = None) -> dict:
  """Generates every request (`make_requests`) with `generate_fn` and scores it.

  Returns {'metrics', 'num_clips', 'details', 'per_request'} (see `summarize`).
  """
  requests = make_requests(clips, tasks, clips_per_task)
  waves = generate_fn(requests)
  if len(waves) != len(requests):
    raise ValueError(f'the generator returned {len(waves)} outputs for {len(requests)} requests')
  records = [score_request(r, w, clips[r.clip], sample_rate) for r, w in zip(requests, waves)]
  metrics, counts, details = summarize(records)
  return {'metrics': metrics, 'num_clips': counts, 'details': details, 'per_request': records}


def check_category(name: str, tasks: Sequence[str]) -> None:
  """`--category`'s value, before anything is generated."""
  if name not in ev.CATEGORIES:
    raise ValueError(f'--category: unknown category {name!r}; known: {ev.CATEGORIES}')
  if 't2a' not in tasks:
    raise ValueError('--category splits the t2a clips: add t2a to --tasks')


def category_split(result: dict, clips: Sequence[dict], name: str) -> dict:
  """The t2a metrics of `run_events`' result over the clips whose annotations hold category
  `name` ('with') and over the others ('without'), each {'metrics', 'num_clips'} as
  `summarize`; 'found': the fraction of the `found_clips` 'with' clips in whose output `name`
  is detected."""
  check_category(name, [r['task'] for r in result['per_request']])
  t2a = [r for r in result['per_request'] if r['task'] == 't2a']
  holds = [r for r in t2a if name in clips[r['clip']]['annotations']['category']]
  rest = [r for r in t2a if name not in clips[r['clip']]['annotations']['category']]
  out = {'name': name, 'found': _mean(any(d[0] == name for d in r['detected']) for r in holds),
         'found_clips': len(holds)}
  for part, recs in (('with', holds), ('without', rest)):
    metrics, counts, _ = summarize(recs) if recs else ({}, {}, {})
    out[part] = {'metrics': metrics, 'num_clips': counts}
  return out


# ---------------------------------------------------------------------------- reporting

def fmt_pct(value) -> str:
  return '-' if value is None else f'{100.0 * value:.1f}'


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join('---' for _ in headers) + '|']
  lines += ['| ' + ' | '.join(str(x) for x in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def events_markdown(result: dict, title: str) -> str:
  """One row per headline metric: value (%) and the number of clips it is computed on."""
  rows = [(header, fmt_pct(result['metrics'][key]), result['num_clips'][key])
          for key, (_, header) in METRICS.items() if key in result['metrics']]
  return f'# {title}\n\n' + markdown_table(('Metric', 'Accuracy (%)', 'Clips'), rows)


def category_markdown(split: dict) -> str:
  """`category_split` as a table: T2A metrics (%) and clip counts with and without it."""
  name, w, wo = split['name'], split['with'], split['without']
  rows = [(f'{name} detected', fmt_pct(split['found']), split['found_clips'], '', '')]
  for key in ('cat', 'count', 'order', 'timestamp'):
    rows.append((METRICS[key][1], fmt_pct(w['metrics'].get(key)), w['num_clips'].get(key, 0),
                 fmt_pct(wo['metrics'].get(key)), wo['num_clips'].get(key, 0)))
  return (f'\n## Text-to-audio clips that hold `{name}`, and the others\n\n' + markdown_table(
      ('Metric', f'with {name} (%)', 'Clips', f'without {name} (%)', 'Clips'), rows))

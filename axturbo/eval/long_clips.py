"""Event benchmark on long clips: windowed generation scored on the whole clip, and its seams.

Clips: held-out clips of the embedded generator (`axturbo.data.embedded`) `num_windows` windows
long (rounded to its 0.1 s grid), keeping those whose events are all at most as long as the
longest event of a training clip (the model has never made a longer one). Their events fall
anywhere, so many cross a window seam (`seam_events` counts them).

Tasks (requests for `benchmark.model_generator`, which runs them through
`longform.generate_long`):
  long_t2a       one caption, the clip's own, for every window; Cat on every clip, Cnt / Ord / TS
                 on the clips whose caption style asks for them (as the t2a task).
  long_segments  segments: one per event, starting halfway between it and the previous event
                 (0 s for the first), captioned 'A single <category> sound.'; the segments say
                 what, how often, in which order and about when, so every judgment is made on
                 every clip.
  long_v2a       the clip's video, cut into the windows (each window its own frames); video sync
                 on the whole clip.
  short_t2a      held-out clips shorter than a window (half of one by default), generated with
                 duration_s: one window, trimmed; checks that the trimmed part keeps the events.
Every long output also gets the seam metric (`axturbo.eval.seams`) at its joins, and so does the
clip's own audio at the same positions (the reference: what the measure reads on audio that
has no seams).
"""
import math
from typing import Sequence

import numpy as np

from axturbo.data import embedded
from axturbo.eval import benchmark
from axturbo.eval import event_scores
from axturbo.eval import seams
from axturbo.generation import longform

LONG_TASKS = ('long_t2a', 'long_segments', 'long_v2a', 'short_t2a')
BASE_TASK = {'long_t2a': 't2a', 'long_segments': 't2a', 'long_v2a': 'v2a', 'short_t2a': 't2a'}
JUDGMENTS = ('cat', 'count', 'order', 'timestamp')
SEGMENT_CAPTION = 'A single {} sound.'   # the embedded data's own one-event caption (order style)


def grid_s(seconds: float) -> float:
  """Nearest duration on the embedded generator's 0.1 s grid (at least 0.5 s)."""
  return max(0.5, round(seconds / embedded.TIME_STEP_S) * embedded.TIME_STEP_S)


def longest_training_event_s(m) -> float:
  """The longest event a training clip can hold: one event in a clip of clip_duration(m),
  at most its slot minus 0.2 s (`embedded._sample_events`)."""
  return round(benchmark.clip_duration(m) - 2 * embedded.TIME_STEP_S, 6)


def long_clips(m, num_clips: int, duration_s: float, max_event_s: float | None = None
               ) -> list[dict]:
  """The first `num_clips` held-out clips of `duration_s` whose events all last at most
  `max_event_s` (default `longest_training_event_s`); each gets its seed as 'seed'."""
  if num_clips < 1:
    raise ValueError(f'--clips must be >= 1, got {num_clips}')
  limit = longest_training_event_s(m) if max_event_s is None else max_event_s
  out, seed = [], 0
  while len(out) < num_clips:
    if seed > 100 * num_clips + 1000:
      raise ValueError(f'no {num_clips} held-out clips of {duration_s} s have every event '
                       f'<= {limit} s')
    clip = embedded.make_clip(seed, 'heldout', sample_rate=m.sample_rate, duration_s=duration_s,
                              fps=m.video_fps, video_size=m.clip.image_size)
    if all(e - s <= limit + 1e-9 for _, s, e in clip['events']):
      out.append(clip)
    seed += 1
  return out


def event_segments(clip: dict) -> list[tuple[float, str]]:
  """One segment per event: from halfway after the previous event's end (0 s for the first),
  captioned SEGMENT_CAPTION."""
  out = []
  previous_end = None
  for cat, start, end in clip['events']:
    begin = 0.0 if previous_end is None else round(0.5 * (previous_end + start), 3)
    out.append((begin, SEGMENT_CAPTION.format(cat)))
    previous_end = end
  return out


def make_requests(long: Sequence[dict], short: Sequence[dict],
                  tasks: Sequence[str] = LONG_TASKS) -> list[benchmark.Request]:
  """Requests grouped by task; 'clip' indexes `long`, or `short` for short_t2a."""
  unknown = [t for t in tasks if t not in LONG_TASKS]
  if unknown:
    raise ValueError(f'--tasks: unknown {unknown}; known for --suite long: {list(LONG_TASKS)}')
  build = {
      'long_t2a': lambda c: {'text': c['caption']},
      'long_segments': lambda c: {'text': '', 'segments': event_segments(c)},
      'long_v2a': lambda c: {'text': '', 'video': c['video']},
      'short_t2a': lambda c: {'text': c['caption']},
  }
  out = []
  for t in tasks:
    for i, c in enumerate(short if t == 'short_t2a' else long):
      out.append(benchmark.Request(t, i, {**build[t](c), 'duration_s': c['duration_s']}))
  return out


def seam_events(clip: dict, seam_samples: Sequence[int]) -> int:
  """How many of the clip's events span a seam."""
  sr = clip['sample_rate']
  return sum(any(s * sr < p < e * sr for p in seam_samples) for _, s, e in clip['events'])


def plan(sample_rate: int, window_frames: int, hop: int, duration_s: float,
         overlap_s: float | None, tail_s: float = 0.0,
         names: tuple[str, str, str] = ('duration_s', 'overlap_s', 'tail_s')
         ) -> list[longform.Window]:
  """The windows `longform.generate_long` uses (`Generator.output_samples // hop`
  frames per generated window); `names` as in `longform.check_duration`."""
  samples, used, overlap = longform.check_duration(
      duration_s, overlap_s, tail_s, sample_rate=sample_rate, window_frames=window_frames,
      hop=hop, names=names)
  return longform.plan_windows(samples, used, overlap, hop)


def score(request: benchmark.Request, wave, clip: dict, sample_rate: int,
          seam_samples: Sequence[int]) -> dict:
  """`benchmark.score_request` on the whole clip under its base task, plus the seam metric
  of the output and of the clip's own audio at the same positions."""
  base = benchmark.Request(BASE_TASK[request.task], request.clip, request.inputs)
  rec = benchmark.score_request(base, wave, clip, sample_rate)
  rec['task'] = request.task
  if seam_samples:
    rec['seams'] = seams.seam_report(wave, seam_samples, sample_rate)
    rec['reference_seams'] = seams.seam_report(clip['waveform'], seam_samples, sample_rate)
  return rec


def summarize(records: Sequence[dict]) -> dict:
  """task -> {'cat', 'count', 'order', 'timestamp' (fractions), 'clips' per judgment, and for
  v2a 'sync'; with seams: median over clips of the median seam ratio, the largest ratio,
  the fraction of seams over 2x, the fraction of silent seams, and the same for the
  reference}."""
  by_task = {}
  for rec in records:
    by_task.setdefault(rec['task'], []).append(rec)
  out = {}
  for task, recs in by_task.items():
    row = {'clips': len(recs)}
    if task == 'long_v2a':
      row['sync'] = float(np.mean([r['scores']['sync'] for r in recs]))
    elif task == 'long_segments':
      for key in JUDGMENTS:
        row[key] = float(np.mean([r['scores'][key] for r in recs]))
        row[f'{key}_clips'] = len(recs)
    else:
      agg = event_scores.aggregate([r['scores'] for r in recs], [r['caption_style'] for r in recs])
      for key in JUDGMENTS:
        row[key] = None if math.isnan(agg[key]) else agg[key] / 100.0
        row[f'{key}_clips'] = sum(key == 'cat' or event_scores.STYLE_METRIC.get(
            r['caption_style']) == key for r in recs)
    if 'seams' in recs[0]:
      for name, key in (('seam', 'seams'), ('reference_seam', 'reference_seams')):
        reports = [r[key] for r in recs]
        row[f'{name}_median_ratio'] = float(np.median([s['median_ratio'] for s in reports]))
        row[f'{name}_max_ratio'] = float(np.max([s['max_ratio'] for s in reports]))
        row[f'{name}_over_2x'] = float(np.mean([x > 2.0 for s in reports for x in s['ratios']]))
        row[f'{name}_silent'] = float(np.mean([s['silent'] for s in reports]))
    out[task] = row
  return out


def run_long(long: Sequence[dict], short: Sequence[dict], generate_fn, windows:
             Sequence[longform.Window], sample_rate: int, tasks: Sequence[str] = LONG_TASKS
             ) -> dict:
  """Generates and scores every request; `windows`: the plan of the long clips (`plan`).

  Returns {'summary' (`summarize`), 'per_request', 'seam_events', 'events', 'seam_samples'}.
  """
  requests = make_requests(long, short, tasks)
  waves = generate_fn(requests)
  if len(waves) != len(requests):
    raise ValueError(f'the generator returned {len(waves)} outputs for {len(requests)} requests')
  long_seams = [w.new_start for w in windows[1:]]
  records = []
  for r, w in zip(requests, waves):
    clip = (short if r.task == 'short_t2a' else long)[r.clip]
    records.append(score(r, w, clip, sample_rate, [] if r.task == 'short_t2a' else long_seams))
  return {'summary': summarize(records), 'per_request': records,
          'seam_events': sum(seam_events(c, long_seams) for c in long),
          'events': sum(len(c['events']) for c in long), 'seam_samples': long_seams}


def long_markdown(result: dict, title: str) -> str:
  """One row per task: Cat / Cnt / Ord / TS or Sync (%, clips) and the seam figures."""
  rows = []
  for task, row in result['summary'].items():
    judged = ' / '.join(f'{benchmark.fmt_pct(row.get(k))} ({row.get(k + "_clips", "-")})'
                        for k in JUDGMENTS) if task != 'long_v2a' else '-'
    sync = benchmark.fmt_pct(row['sync']) if 'sync' in row else '-'
    seam, ref = (_seam_cell(row, name) for name in ('seam', 'reference_seam'))
    rows.append((task, row['clips'], judged, sync, seam, ref))
  return (f'# {title}\n\n' + benchmark.markdown_table(
      ('Task', 'Clips', 'Cat / Cnt / Ord / TS in % (clips)', 'Sync (%)',
       'Seams: flux ratio median / max / over 2x; silent', 'Reference at the seams'), rows)
          + f'\n{result["seam_events"]} of the {result["events"]} events of the long clips '
          'span a seam.\n')


def _seam_cell(row: dict, name: str) -> str:
  if f'{name}_median_ratio' not in row:
    return '-'
  return (f'{row[name + "_median_ratio"]:.2f} / {row[name + "_max_ratio"]:.1f} / '
          f'{100 * row[name + "_over_2x"]:.0f} %; {100 * row[name + "_silent"]:.0f} %')

"""T2A-bench-style instruction-following scores and audio-video synchrony on the embedded data.

The paper's T2A-bench (App. A-C) judges each generated clip with binary, strict criteria; an
MLLM annotates the audio blindly and a second pass compares against the prompt. Here the exact
detector of `axturbo.eval.event_detector` plays the annotator, and the clip's `annotations`
({'category': {name: count}, 'SED': [[name, start, end]], 'time_relation': [names]}) are the
prompt's answer key:
  Cat-acc: every annotated category is detected (the paper's rule); `cat_exact` additionally
           requires no other category to be detected.
  Cnt-acc: for every annotated category, the detected count equals the annotated count.
  Ord-acc: the detected sequence of events, restricted to annotated categories, equals
           `time_relation` (events repeat in it as often as they occur).
  TS-acc:  every annotated event is matched one-to-one by a detected event of its category
           whose start and end are both within `tolerance_s` (1 s) of the annotated ones.
The benchmark reports each metric on its own task (Cat on all prompts, Cnt on count prompts,
...): `aggregate` does the same with the clip's `caption_style`.
"""
from typing import Iterable, Mapping, Sequence

import numpy as np

from axturbo.data import event_video as data_video

Event = tuple[str, float, float]
TS_TOLERANCE_S = 1.0
# caption_style of a clip -> the T2A-bench metric judged on it (Cat-acc is judged on all clips).
STYLE_METRIC = {'count': 'count', 'order': 'order', 'timestamp': 'timestamp'}


def _match_intervals(reference: Sequence[Event], detected: Sequence[Event], start_tol: float,
                     end_tol: float | None) -> int:
  """Greedy one-to-one matching in time order; returns how many reference events matched."""
  used = [False] * len(detected)
  matched = 0
  for cat, start, end in sorted(reference, key=lambda e: e[1]):
    for i, (dcat, dstart, dend) in enumerate(detected):
      if (not used[i] and dcat == cat and abs(dstart - start) <= start_tol
          and (end_tol is None or abs(dend - end) <= end_tol)):
        used[i] = True
        matched += 1
        break
  return matched


def score_clip(detected: Sequence[Event], annotations: Mapping,
               tolerance_s: float = TS_TOLERANCE_S) -> dict[str, bool]:
  """Binary T2A-bench judgments of one clip: cat, cat_exact, count, order, timestamp."""
  counts = dict(annotations['category'])
  found: dict[str, int] = {}
  for cat, _, _ in detected:
    found[cat] = found.get(cat, 0) + 1
  sequence = [cat for cat, _, _ in sorted(detected, key=lambda e: e[1]) if cat in counts]
  sed = [(c, float(s), float(e)) for c, s, e in annotations['SED']]
  return {
      'cat': all(c in found for c in counts),
      'cat_exact': set(found) == set(counts),
      'count': all(found.get(c, 0) == n for c, n in counts.items()),
      'order': sequence == list(annotations['time_relation']),
      'timestamp': _match_intervals(sed, detected, tolerance_s, tolerance_s) == len(sed),
  }


def aggregate(scores: Iterable[Mapping[str, bool]], styles: Iterable[str] | None = None
              ) -> dict[str, float]:
  """Percentages over clips.

  '<metric>_all' averages every clip. '<metric>' follows T2A-bench: 'cat' and 'cat_exact' over
  every clip; 'count' / 'order' / 'timestamp' only over clips whose caption_style (`styles`,
  one per clip) asks for it, or over every clip when `styles` is None. NaN when no clip counts.
  """
  scores = list(scores)
  styles = None if styles is None else list(styles)
  if styles is not None and len(styles) != len(scores):
    raise ValueError(f'{len(scores)} scores but {len(styles)} caption styles')
  pct = lambda xs: 100.0 * float(np.mean(xs)) if xs else float('nan')  # noqa: E731
  out = {}
  for key in ('cat', 'cat_exact', 'count', 'order', 'timestamp'):
    out[key + '_all'] = pct([s[key] for s in scores])
    if styles is None or key not in STYLE_METRIC.values():
      out[key] = out[key + '_all']
    else:
      out[key] = pct([s[key] for s, st in zip(scores, styles) if STYLE_METRIC.get(st) == key])
  return out


def video_events(frames, fps: float) -> list[Event]:
  """Visual events [(category, first_shown_s, last_shown_s + 1 / fps)] of a rendered video.

  Frame f shows time f / fps; a shape is identified by its colour (`video.CATEGORY_LOOKS`).
  Runs of consecutive frames showing the same colour form one visual event.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be (F, H, W, 3), got shape {frames.shape}')
  colours = {tuple(rgb): cat for cat, (rgb, _) in data_video.CATEGORY_LOOKS.items()}
  labels = []
  for frame in frames.reshape(frames.shape[0], -1, 3):
    lit = frame[np.any(frame > 0, axis=-1)]
    if lit.shape[0] == 0:
      labels.append(None)
      continue
    values, counts = np.unique(lit, axis=0, return_counts=True)
    labels.append(colours.get(tuple(int(v) for v in values[np.argmax(counts)])))
  out = []
  for f, cat in enumerate(labels):
    if cat is None:
      continue
    if out and out[-1][0] == cat and labels[f - 1] == cat:
      out[-1] = (cat, out[-1][1], (f + 1) / fps)
    else:
      out.append((cat, f / fps, (f + 1) / fps))
  return out


def video_sync(detected: Sequence[Event], frames, fps: float, slack_s: float = 0.05
               ) -> dict[str, float]:
  """Do detected sounds start when their shapes appear?

  A visual event (shape of category c first shown at frame time v) is synced if a detected
  event of c starts within [v - 1 / fps - slack_s, v + slack_s]: the sound may begin up to one
  frame before the first frame that shows it (frames sample time every 1 / fps), never later.
  Matching is one-to-one. Returns recall (visual events synced), precision (detected events
  matched) and `synced` (1.0 iff every visual and every detected event is matched).
  """
  visual = video_events(frames, fps)
  shifted = [(c, s - 0.5 / fps, e) for c, s, e in visual]  # centre the asymmetric window
  matched = _match_intervals(shifted, detected, 0.5 / fps + slack_s, None)
  recall = matched / len(visual) if visual else float(not detected)
  precision = matched / len(detected) if detected else float(not visual)
  return {'recall': recall, 'precision': precision,
          'synced': float(matched == len(visual) == len(detected))}

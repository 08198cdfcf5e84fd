"""The event benchmark during training: every `eval_every` steps, train.py and distill.py score
the weights they evaluate (the EMA) on the first `eval_event_clips` held-out clips of the
embedded dataset, with the tasks and scoring of `python -m axturbo.eval events`
(`axturbo.eval.benchmark`), and put the metrics in TensorBoard as `events/<metric>` (the
teacher: Euler steps `eval_event_steps`, no CFG; the student: its own sampler at each of
`eval_event_steps`, `events/<metric>_<n>step`).

Clip i uses noise seed i, as the eval CLI's `--seed 0` does: at the same step count and clips,
the last in-training value of the student is the number the CLI gives for the export.
"""
from typing import Any, Callable, Sequence

import jax
import numpy as np

from axturbo.eval import benchmark
from axturbo.generation import Generator, SamplerOptions

TASKS = ('t2a', 'v2a', 'inpaint')


def scorer(config, section, where: str) -> Callable[[Any], dict[str, float]] | None:
  """params -> {'events/<metric>[_<n>step]': value}, for `section` (`config.train` or
  `config.distill`, named `where`); None when `section.eval_event_clips` is 0."""
  clips = int(section.get('eval_event_clips', 0))
  if not clips:
    return None
  field = f'config.{where}.eval_event_clips={clips}'
  if config.data.source != 'embedded':
    raise ValueError(f"{field}: the event benchmark scores the embedded dataset's held-out "
                     f"clips; config.data.source is {config.data.source!r} (set it to 0)")
  if jax.process_count() > 1:
    raise ValueError(f'{field}: the in-training event benchmark runs in a single process '
                     f'(this run has {jax.process_count()}); score the exports with '
                     '`python -m axturbo.eval events` instead')
  steps = tuple(section.eval_event_steps)
  kind = 'student' if where == 'distill' else 'teacher'
  for n in steps:
    try:
      SamplerOptions(sampler=kind, steps=n)
    except ValueError as e:
      raise ValueError(f'config.{where}.eval_event_steps={steps}: {e}') from None
  try:
    heldout = benchmark.heldout_clips(config.model, clips)
  except ValueError as e:   # the embedded clips' own limits (length, rate)
    raise ValueError(f'{field}: the held-out clips of this model cannot be made ({e})') from None
  return EventScorer(config.model, kind, heldout, steps,
                     batch_size=min(clips, config.data.batch_size))


class EventScorer:
  """Holds one `Generator` (its programs compile at the first call) and swaps its weights."""

  def __init__(self, model_config, kind: str, clips: Sequence[dict], steps: Sequence[int],
               batch_size: int, tasks: Sequence[str] = TASKS):
    self.config, self.kind, self.clips, self.steps = model_config, kind, list(clips), steps
    self.batch_size, self.tasks = batch_size, tuple(tasks)
    self.generator = None

  def options(self, steps: int) -> SamplerOptions:
    return SamplerOptions(sampler=self.kind, steps=steps,
                          cfg_scale=1.0 if self.kind == 'teacher' else None, seed=0)

  def __call__(self, params: Any) -> dict[str, float]:
    host = jax.tree.map(np.asarray, jax.device_get(params))
    if self.generator is None:
      self.generator = Generator(self.config, host, kind=self.kind,
                                 source='in-training weights')
    else:
      self.generator.replace_params(host)
    out = {}
    for n in self.steps:
      generate = benchmark.model_generator(self.generator, self.options(n),
                                           batch_size=self.batch_size)
      result = benchmark.run_events(self.clips, generate, self.config.sample_rate, self.tasks)
      suffix = f'_{n}step' if self.kind == 'student' else ''
      out.update({f'events/{k}{suffix}': float(v) for k, v in result['metrics'].items()
                  if v is not None})
    return out

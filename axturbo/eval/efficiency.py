"""Efficiency vs quality table (the paper's Table II protocol) on the event benchmark.

For one sampler configuration (teacher: Euler + CFG, NFE = 2 x steps; student: denoise-renoise,
NFE = steps):
  latency   end-to-end `Generator.generate` of one text prompt (batch size 1: tokenize, encode
            conditions, sample, decode, copy to host), mean +- std (sample std, ddof 1) over
            `runs` timed calls after `warmup` untimed ones (the first compiles).
  RTF       mean latency / duration of the generated audio (< 1: faster than real time).
  scores    the event benchmark (`axturbo.eval.benchmark`) with the same sampler.
"""
import dataclasses
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from axturbo.generation import sampling
from axturbo.generation.request import Request
from axturbo.generation.request import SamplerOptions
from axturbo.eval import benchmark

DEFAULT_TEACHER_STEPS = (4, 25, 50)
DEFAULT_STUDENT_STEPS = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class RowConfig:
  """One table row: which checkpoint ('teacher' / 'student' role), sampler and step count."""
  model: str
  sampler: str
  steps: int
  cfg_scale: float

  @property
  def label(self) -> str:
    if self.sampler == 'teacher':
      return f'{self.model} (Euler, CFG {self.cfg_scale:g})'
    if self.model == 'teacher':
      return 'teacher weights, student sampler (undistilled)'
    return f'{self.model} (denoise-renoise)'


def nfe(sampler: str, steps: int, cfg_scale: float) -> int:
  """Network evaluations per sample of a sampler configuration."""
  if sampler == 'student':
    return sampling.student_nfe(steps)
  if sampler == 'teacher':
    return sampling.euler_nfe(steps, cfg_scale)
  raise ValueError(f"sampler must be 'student' or 'teacher', got {sampler!r}")


def time_runs(fn: Callable[[], object], runs: int, warmup: int,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
  """Seconds of each of `runs` calls of `fn`, after `warmup` untimed calls.

  Each call's result is blocked on (`jax.block_until_ready`), so asynchronous dispatch does
  not hide device time.
  """
  if runs < 1 or warmup < 0:
    raise ValueError(f'need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}')
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(runs):
    start = clock()
    jax.block_until_ready(fn())
    times.append(clock() - start)
  return times


def latency_stats(times: Sequence[float], duration_s: float) -> dict:
  """{'latency_mean_s', 'latency_std_s' (ddof 1; 0 for one run), 'rtf', 'runs_s'}."""
  t = np.asarray(times, np.float64)
  if t.size == 0:
    raise ValueError('no timed runs')
  mean = float(t.mean())
  return {'latency_mean_s': mean, 'latency_std_s': float(t.std(ddof=1)) if t.size > 1 else 0.0,
          'rtf': mean / duration_s, 'runs_s': [float(x) for x in t]}


def measure_latency(gen, sampler: str, steps: int, cfg_scale: float, *, runs: int = 20,
                    warmup: int = 5, text: str = 'a dog barks', seed: int = 0) -> dict:
  """Table II latency of `gen` at batch size 1 (see the module docstring), plus NFE."""
  request = Request(text=text)
  options = SamplerOptions(sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed)
  fn = lambda: gen.generate(request, options)
  duration = gen.output_samples / gen.config.sample_rate
  out = latency_stats(time_runs(fn, runs, warmup), duration)
  out.update(nfe=nfe(sampler, steps, cfg_scale), duration_s=duration)
  return out


def table_rows(teacher_steps: Sequence[int], student_steps: Sequence[int], cfg_scale: float,
               have_teacher: bool, have_student: bool,
               undistilled_steps: Sequence[int] = ()) -> list[RowConfig]:
  """Teacher rows (Euler + CFG), undistilled rows (the student's denoise-renoise sampler on the
  teacher's weights: what distillation starts from) and student rows."""
  rows = []
  if have_teacher:
    rows += [RowConfig('teacher', 'teacher', int(s), float(cfg_scale)) for s in teacher_steps]
    for s in undistilled_steps:
      sampling.check_student_steps(int(s))
      rows.append(RowConfig('teacher', 'student', int(s), 1.0))
  if have_student:
    for s in student_steps:
      sampling.check_student_steps(int(s))
      rows.append(RowConfig('student', 'student', int(s), 1.0))
  return rows


def run_table(generators: dict, rows: Sequence[RowConfig], clips: Sequence[dict], *,
              runs: int, warmup: int, batch_size: int, seed: int = 0,
              tasks: Sequence[str] = benchmark.TASKS,
              clips_per_task: Mapping[str, int] | None = None, progress_factory=None) -> list[dict]:
  """Latency + event scores for every row; `generators` maps 'teacher'/'student' to a
  `Generator`; `clips_per_task` as `benchmark.make_requests`. `progress_factory(total, desc)`
  makes a progress bar (or None)."""
  out = []
  for row in rows:
    gen = generators[row.model]
    timing = measure_latency(gen, row.sampler, row.steps, row.cfg_scale, runs=runs,
                             warmup=warmup, text=clips[0]['caption'], seed=seed)
    n = len(benchmark.make_requests(clips, tasks, clips_per_task))
    bar = progress_factory(n, f'{row.label}, {row.steps} steps') if progress_factory else None
    options = SamplerOptions(sampler=row.sampler, steps=row.steps, cfg_scale=row.cfg_scale,
                             seed=seed)
    generate_fn = benchmark.model_generator(gen, options, batch_size=batch_size, progress=bar)
    scores = benchmark.run_events(clips, generate_fn, gen.config.sample_rate, tasks,
                                  clips_per_task)
    if bar is not None:
      bar.close()
    out.append({'label': row.label, **dataclasses.asdict(row), **timing,
                'metrics': scores['metrics'], 'num_clips': scores['num_clips'],
                'details': scores['details']})
  return out


def table_markdown(results: Sequence[dict], title: str) -> str:
  """Rows: configurations; columns: Steps, NFE, latency, RTF, then the benchmark metrics."""
  keys = [k for k in benchmark.METRICS if any(k in r['metrics'] for r in results)]
  headers = ['Model', 'Steps', 'NFE', 'Latency (s)', 'RTF'] + [
      benchmark.METRICS[k][1] + ' (%)' for k in keys]
  rows = []
  for r in results:
    rows.append([r['label'], r['steps'], r['nfe'],
                 f"{r['latency_mean_s']:.3f} ± {r['latency_std_s']:.3f}", f"{r['rtf']:.3f}"]
                + [benchmark.fmt_pct(r['metrics'].get(k)) for k in keys])
  counts = {k: next((r['num_clips'][k] for r in results if k in r['num_clips']), 0)
            for k in keys}
  note = ('\nClips per metric: ' + ', '.join(f'{benchmark.METRICS[k][1]} {counts[k]}'
                                              for k in keys) + '.\n')
  return f'# {title}\n\n' + benchmark.markdown_table(headers, rows) + note

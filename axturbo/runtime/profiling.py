"""What the compiler and the profiler say about a training step.

`compile_report`: XLA's memory analysis (arguments, outputs, temporaries, peak, per device) and
its cost-analysis FLOPs of a compiled step, logged once at compile (loop.compile_logged).

`StepTrace`: a `jax.profiler` trace of the steps `config.profile.steps = (START, END)` (the
log line's numbering: step N is the N-th step; both included) into
`<workdir>/tensorboard/plugins/profile/<time>/<host>.xplane.pb`, where TensorBoard's profile
plugin finds it (`tensorboard --logdir <workdir>/tensorboard`, tab PROFILE). Each step is a
`StepTraceAnnotation` named after the trainer ('train', 'distill'); distill.py marks its student
and fake steps inside it.
"""
import contextlib
from typing import Any

from absl import logging


def check_profile(p) -> None:
  """`config.profile.steps`: () (off) or (START, END) with 1 <= START <= END."""
  steps = tuple(p.steps)
  if steps and not (len(steps) == 2 and all(isinstance(s, int) and not isinstance(s, bool)
                                             for s in steps) and 1 <= steps[0] <= steps[1]):
    raise ValueError(f'--config.profile.steps={p.steps!r}: must be START,END (integers, '
                     '1 <= START <= END: the steps to trace, both included), or () for none')


def _mb(n: float) -> str:
  return f'{n / 2**20:.1f} MiB'


def compile_report(compiled: Any) -> str:
  """'arguments 1.2 MiB, outputs ..., temporaries ..., peak ... per device; 3.4 GFLOPs' of one
  compiled program, '' where the backend reports neither."""
  parts = []
  try:
    m = compiled.memory_analysis()
  except Exception:  # some backends do not implement it
    m = None
  if m is not None:
    peak = getattr(m, 'peak_memory_in_bytes', 0) or (
        m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        + m.temp_size_in_bytes)
    parts.append(f'arguments {_mb(m.argument_size_in_bytes)}, outputs '
                 f'{_mb(m.output_size_in_bytes)} ({_mb(m.alias_size_in_bytes)} of them donated '
                 f'arguments), temporaries {_mb(m.temp_size_in_bytes)}, peak {_mb(peak)} '
                 'per device')
  from axturbo.runtime import reporting
  flops = reporting.compiled_flops(compiled)
  if flops:
    parts.append(f'{flops / 1e9:.3g} GFLOPs per device (XLA cost analysis)')
  return '; '.join(parts)


def log_compile_report(what: str, compiled: Any) -> None:
  """One line per compiled program of `compiled` (a program or a {name: program} dict)."""
  programs = compiled.items() if isinstance(compiled, dict) else [(what, compiled)]
  for name, program in programs:
    report = compile_report(program)
    if report:
      logging.info('%s: %s', name if isinstance(compiled, dict) else what, report)


class StepTrace:
  """Traces the steps in `steps` = (START, END) (or nothing for ()) of a loop that starts after
  `first_step` steps. Use `with trace.step(n): ...` around step n, then `trace.after(n, state)`; `close()` at the
  end of the loop.
  """

  def __init__(self, steps, logdir, name: str, first_step: int):
    steps = tuple(steps)
    self.name, self.logdir = name, logdir
    self.start, self.end = (max(steps[0], first_step + 1), steps[1]) if steps else (1, 0)
    self.active, self._state = False, None
    if steps and self.start > self.end:
      logging.warning('profile steps %s were run before this resume at step %d: not traced',
                      steps, first_step)

  @contextlib.contextmanager
  def step(self, n: int):
    import jax
    if n == self.start and n <= self.end:
      # No Python tracer: it records every Python call (a million events and 20 s to stop
      # for two micro steps on CPU); the device ops and the step annotations are what a step
      # profile is for.
      options = jax.profiler.ProfileOptions()
      options.python_tracer_level = 0
      jax.profiler.start_trace(str(self.logdir), profiler_options=options)
      self.active = True
      logging.info('profiling steps %d to %d into %s', self.start, self.end, self.logdir)
    with jax.profiler.StepTraceAnnotation(self.name, step_num=n):
      yield

  def after(self, n: int, state: Any) -> None:
    """After step `n` (its result `state`): ends the trace after step `end`."""
    self._state = state
    if self.active and n >= self.end:
      self.close()

  def close(self) -> None:
    """Ends the trace, if open (also when the loop ends before `end`: a stop, an error)."""
    import jax
    if not self.active:
      return
    try:
      jax.block_until_ready(self._state)  # the trace must hold the traced steps' device work
    except Exception:  # an error mid-step (its inputs donated): keep what was traced
      pass
    jax.profiler.stop_trace()
    self.active = False
    logging.info('profile of steps %d to %d written to %s/plugins/profile', self.start,
                 self.end, self.logdir)

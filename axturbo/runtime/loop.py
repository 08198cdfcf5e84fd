"""What train.py and distill.py share once their state is ready: the ahead-of-time compile and
the resumable step loop (step, report, checkpoint, stop on SIGTERM/Ctrl-C: preemption.py, trace
the `config.profile` steps: profiling.py)."""
import contextlib
import time
from typing import Any, Callable

from absl import logging

from axturbo.runtime import checkpoints, compile_cache, preemption, profiling, reporting, sharding


def compile_logged(what: str, compile_fn: Callable[[], Any]) -> Any:
  """compile_fn() between a start and an end log line (at full size compiling takes minutes
  with nothing else on the console), then XLA's memory and FLOPs report of each program."""
  t0 = time.perf_counter()
  logging.info('compiling %s', what)
  before = compile_cache.counts()
  compiled = compile_fn()
  logging.info('compiled %s in %.1f s%s', what, time.perf_counter() - t0,
               compile_cache.note_since(before))
  profiling.log_compile_report(what, compiled)
  wait_for_every_host(f'compiled {what}')
  return compiled


def wait_for_every_host(name: str, timeout_s: float = 3600.0) -> None:
  """Multi-host: returns once every process has reached `name`. One host may load its programs
  from the compilation cache in seconds while another compiles for minutes (JAX writes cache
  entries from process 0 only); the first host's collectives would wait for the second, and on
  CPU Gloo gives up after 30 s. The coordination service's barrier has no such limit."""
  import jax
  if jax.process_count() == 1:
    return
  from jax._src import distributed
  distributed.global_state.client.wait_at_barrier(f'axturbo: {name}', int(timeout_s * 1000))


def run_steps(step_fn: Callable[[Any, int, dict], tuple[Any, dict]], state: Any, *, section,
              reporter_cls: type, workdir, global_batch: int, flops: float | None, data_iter,
              local: dict | None, mesh, manager, profile_steps=(), step_name: str = 'train',
              evaluate: Callable[[Any], dict] | None = None) -> tuple[Any, int, Any]:
  """Steps from `state.step` to `section.total_steps`, a line every `section.log_every` steps
  and a checkpoint every `section.checkpoint_every` and at the last step.

  Args:
    step_fn: (state, steps done before this one, global batch) -> (state, metrics).
    section: config.train or config.distill (total_steps, log_every, checkpoint_every,
      peak_flops_per_device).
    reporter_cls: the trainer's `reporting.Reporter` subclass.
    flops: FLOPs of one step per device (for MFU), or None.
    local: this host's next batch if already drawn (compiling read its shapes), else None.
    profile_steps: `config.profile.steps`, (START, END) to trace or () (profiling.StepTrace);
      `step_name` names the steps in the trace.
    evaluate: state -> ({scalar tag: value}, {audio tag: clip}) (runtime/evaluation.py), run
      after every `section.eval_every` steps and after the last; None for none.

  Returns:
    (state, steps done, the reporter): the reporter is left open for the caller to read its
    history and close it; every checkpoint save has finished.

  Raises:
    preemption.Stopped: after SIGTERM or Ctrl-C (any host), once the checkpoint of the step
      boundary that every host reached has been written and the reporter closed.
  """
  step = int(state.step)
  reporter = reporter_cls(workdir, section.log_every, global_batch, flops,
                          section.peak_flops_per_device, first_step=step,
                          total_steps=section.total_steps, data_iter=data_iter)
  trace = profiling.StepTrace(profile_steps, reporting.local_copy(workdir / 'tensorboard'),
                              step_name, first_step=step)
  with preemption.Watch() as watch, contextlib.closing(trace):
    # Multi-host: tells JAX's preemption sync where this run starts, so that a notice during
    # the first step already picks a step boundary ahead of every host.
    watch.should_stop(manager, step)
    while step < section.total_steps:
      if local is None:
        local = next(data_iter)
      with trace.step(step + 1):
        state, metrics = step_fn(state, step, sharding.global_batch(local, mesh))
      local = None
      step += 1
      trace.after(step, state)
      reporter.record(step, metrics)
      if evaluate is not None and (step % section.eval_every == 0 or
                                   step == section.total_steps):
        t0 = time.perf_counter()
        scalars, audio = evaluate(state)
        reporter.evaluated(step, scalars, time.perf_counter() - t0, audio,
                           getattr(evaluate, 'sample_rate', 0))
      # The last step finishes the run (export) even when a stop was asked for during it.
      stop = watch.should_stop(manager, step) and step < section.total_steps
      if stop:
        reporter.close()               # its last line's rate leaves out the save below
        manager.wait_until_finished()  # a periodic save still running
      if stop or step % section.checkpoint_every == 0 or step == section.total_steps:
        # The iterator has produced exactly the batches of steps < `step`.
        checkpoints.save(manager, state, data_iter, force=stop)
      if stop:
        manager.wait_until_finished()
        raise watch.stopped(step, manager.directory / str(step))
  manager.wait_until_finished()
  return state, step, reporter


"""Stopping a run without losing work: SIGTERM (a preemption notice) and SIGINT (Ctrl-C) end the
step loop at the next step boundary with a checkpoint of that step, then the process exits with
its own code (`EXIT_PREEMPTED`, `EXIT_INTERRUPTED`) and one console line.

Multi-host, every host must save the same step (the save is collective). JAX's preemption sync
service (on by default once `jax.distributed` is initialised) catches SIGTERM on any host, and
`CheckpointManager.reached_preemption(step)` turns true at the same step on all of them. Ctrl-C on
one host is forwarded to that service as a SIGTERM to itself. A single process without
`jax.distributed` catches both signals itself.

Outside the step loop (restore, compile, export) a single process keeps the default handlers:
SIGTERM ends it at once and Ctrl-C raises KeyboardInterrupt (`launch.one_line_errors` makes it
one line); no step is lost, as none ran since the last checkpoint. Multi-host, JAX holds SIGTERM
from `jax.distributed.initialize` on, and its sync point is the fastest host's last reported step
+ 1: `checkpoints.restore_latest` reports the resumed step, so a notice during the compile stops
the run after its first step; a notice during the restore itself is missed (its sync point falls
before the resumed step).
"""
import os
import signal
import threading

from absl import logging

EXIT_PREEMPTED = 75     # EX_TEMPFAIL (sysexits.h): saved, try again; rerun the same command
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class Stopped(Exception):
  """The loop saved a checkpoint and stopped on a signal; `exit_code` is the process's."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def _sync_service_on() -> bool:
  """Whether JAX's preemption sync manager runs (it owns SIGTERM then)."""
  try:
    from jax._src import distributed
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):   # a JAX without this private state
    import jax
    return jax.process_count() > 1


class Watch:
  """Context manager around the step loop: installs the handlers, restores the old ones.

  `should_stop(manager, step)` must be called at every step boundary on every host, with the
  step just completed (orbax calls the sync service with absolute steps too).
  """

  def __init__(self):
    import jax
    self.synced = _sync_service_on()
    self.multihost = jax.process_count() > 1
    self.received: str | None = None   # the first signal caught here: 'SIGTERM' or 'SIGINT'
    self._old = {}

  def __enter__(self) -> 'Watch':
    if threading.current_thread() is not threading.main_thread():
      logging.warning('step loop outside the main thread: SIGTERM and Ctrl-C are not caught')
      return self
    if self.synced:
      ours = (signal.SIGINT,)            # SIGTERM stays with JAX's preemption notifier
    elif self.multihost:
      logging.warning('jax_enable_preemption_service is off: a SIGTERM or Ctrl-C on one host '
                      'stops it without a checkpoint')
      ours = ()
    else:
      ours = (signal.SIGTERM, signal.SIGINT)
    for s in ours:
      self._old[s] = signal.signal(s, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    for s, old in self._old.items():
      signal.signal(s, old)
    self._old = {}

  def _on_signal(self, signum: int, frame) -> None:
    del frame
    if self.received == 'SIGINT' and signum == signal.SIGINT:
      raise KeyboardInterrupt   # a second Ctrl-C: stop now (the last whole checkpoint is kept)
    self.received = self.received or signal.Signals(signum).name
    if self.synced and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)   # tell every host, through JAX's notifier

  def should_stop(self, manager, step: int) -> bool:
    """Whether to save `step` and stop (the same answer on every host)."""
    if self.synced:
      return manager.reached_preemption(step)
    return self.received is not None

  def stopped(self, step: int, checkpoint) -> Stopped:
    """The exception that ends the run after `checkpoint` (of `step`) was saved."""
    resume = f'checkpoint {checkpoint} saved; rerun the same command to resume'
    if self.received == 'SIGINT':
      return Stopped(f'interrupted (Ctrl-C) at step {step}: {resume}', EXIT_INTERRUPTED)
    where = ('SIGTERM' if self.received else
             'a preemption notice (SIGTERM on this or another host)')
    return Stopped(f'stopped by {where} at step {step}: {resume} (exit code {EXIT_PREEMPTED})',
                   EXIT_PREEMPTED)

"""Running train.py / distill.py in subprocesses for the end-to-end tests."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


# Set by tests/conftest.py to a folder of the test session: every script a test runs then reuses
# the programs that an earlier test's scripts compiled (most run the same micro configs).
SHARED_CACHE_VAR = 'AXTURBO_TESTS_JAX_CACHE'


def env(tmp: pathlib.Path, devices: int = 8) -> dict:
  """CPU with `devices` fake devices; later runs reuse earlier runs' compiled programs (of the
  session when conftest set SHARED_CACHE_VAR, else of `tmp`)."""
  cache = pathlib.Path(os.environ.get(SHARED_CACHE_VAR) or tmp)
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
              JAX_COMPILATION_CACHE_DIR=str(cache / f'jax_cache_{devices}'),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def log_path(workdir) -> pathlib.Path:
  return pathlib.Path(str(workdir) + '.log')


def start(script: str, workdir, tmp, *args, devices: int = 8) -> subprocess.Popen:
  """`python <script> --workdir=<workdir> <args>`, output appended to <workdir>.log; in its own
  process group, as a command started from a terminal (Ctrl-C: `os.killpg(pid, SIGINT)`)."""
  cmd = [sys.executable, str(REPO / script), f'--workdir={workdir}', *args]
  log = open(log_path(workdir), 'ab')
  return subprocess.Popen(cmd, env=env(tmp, devices), cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)


def wait_ok(proc: subprocess.Popen, workdir, timeout: float) -> None:
  rc = proc.wait(timeout=timeout)
  assert rc == 0, log_path(workdir).read_text()[-3000:]


def checkpoint_steps(workdir) -> list[int]:
  ckpt_dir = pathlib.Path(workdir) / 'checkpoints'
  return [int(p.name) for p in ckpt_dir.glob('*') if p.name.isdigit()]


def wait_for_checkpoint(proc: subprocess.Popen, workdir, timeout: float, after: int = 0
                        ) -> None:
  """Returns once the run has written a checkpoint of a step > `after`; asserts it is still
  running then and has not exported."""
  deadline = time.time() + timeout
  while (time.time() < deadline and proc.poll() is None
         and max(checkpoint_steps(workdir), default=0) <= after):
    time.sleep(0.05)
  assert proc.poll() is None, ('run finished before it could be stopped (exit '
                               f'{proc.returncode}):\n' + log_path(workdir).read_text()[-3000:])
  assert not (pathlib.Path(workdir) / 'export').exists()


def sigkill_after_first_checkpoint(proc: subprocess.Popen, workdir, timeout: float) -> None:
  """Kills the run with SIGKILL as soon as it has written a checkpoint."""
  wait_for_checkpoint(proc, workdir, timeout)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (pathlib.Path(workdir) / 'export').exists()


def stop_lines(workdir) -> list[tuple[int, str]]:
  """(step, line) of each 'stopped by ... / interrupted ... at step N' console line."""
  found = re.findall(r'^((?:stopped by .*|interrupted \(Ctrl-C\)) at step (\d+): .*)$',
                     log_path(workdir).read_text(), re.M)
  return [(int(step), line) for line, step in found]

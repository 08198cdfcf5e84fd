"""train.py end to end in subprocesses: SIGKILL + resume is bit-exact, 2 processes x 4 devices
(jax.distributed on localhost) match 1 process x 8 devices, unknown config keys are refused."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from axturbo import checkpoints

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = str(REPO / 'tests' / 'micro_train_config.py')
STEPS, EVERY = 24, 4


def _env(tmp, devices=8):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             # Later runs reuse the first run's compiled step.
             JAX_COMPILATION_CACHE_DIR=str(tmp / f'jax_cache_{devices}'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return env


def _train(workdir, tmp, *extra, devices=8):
  cmd = [sys.executable, str(REPO / 'train.py'), f'--config={CONFIG}', f'--workdir={workdir}',
         f'--config.train.total_steps={STEPS}', f'--config.train.checkpoint_every={EVERY}',
         f'--config.train.log_every={EVERY}', *extra]
  log = open(pathlib.Path(str(workdir) + '.log'), 'ab')
  return subprocess.Popen(cmd, env=_env(tmp, devices), cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT)


def _wait(proc, workdir, timeout=1500):
  rc = proc.wait(timeout=timeout)
  assert rc == 0, pathlib.Path(str(workdir) + '.log').read_text()[-3000:]


def _exported(workdir):
  return jax.tree.map(np.asarray, checkpoints.load_params(pathlib.Path(workdir) / 'export'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted 1-process x 8-device run."""
  tmp = tmp_path_factory.mktemp('train_e2e')
  workdir = tmp / 'reference'
  _wait(_train(workdir, tmp), workdir)
  return tmp, _exported(workdir)


def test_sigkill_and_resume_is_bit_exact(reference):
  tmp, expected = reference
  workdir = tmp / 'killed'
  proc = _train(workdir, tmp)
  ckpt_dir = workdir / 'checkpoints'
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    done = [int(p.name) for p in ckpt_dir.glob('*') if p.name.isdigit()] if ckpt_dir.exists() else []
    if done:
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / 'export').exists()
  steps = [int(p.name) for p in ckpt_dir.glob('*') if p.name.isdigit()]
  assert steps and max(steps) < STEPS, steps  # really mid-training
  _wait(_train(workdir, tmp), workdir)
  log = pathlib.Path(str(workdir) + '.log').read_text()
  assert 'resumed from step' in log
  got = _exported(workdir)
  jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_two_processes_match_one(reference):
  tmp, expected = reference
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = tmp / 'two_hosts'
  procs = [_train(workdir, tmp, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                  f'--process_id={i}', devices=4) for i in range(2)]
  for p in procs:
    _wait(p, workdir)
  got = _exported(workdir)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)


def test_unknown_config_key_is_refused(tmp_path):
  cmd = [sys.executable, str(REPO / 'train.py'), f'--config={CONFIG}',
         f'--workdir={tmp_path}', '--config.train.nonexistent=1']
  out = subprocess.run(cmd, env=_env(tmp_path), cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0
  assert 'nonexistent' in out.stderr + out.stdout

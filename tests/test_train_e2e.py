"""train.py end to end in subprocesses: SIGKILL, Ctrl-C and resume are bit-exact, 2 processes x 4
devices (jax.distributed on localhost) match 1 process x 8 devices, SIGTERM to one of them saves
the same step on both and resumes bit-exact, and two processes on a workdir in use both stop. The batches come from a TFDS dataset
through the grain pipeline (data.source='tfds'), so the data iterator's checkpoint and its
per-host rows are part of both checks. (Bad config overrides: tests/test_launch.py.)"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from axturbo.data import tfds_builders
from axturbo.runtime import checkpoints
from axturbo.runtime import preemption
from tests import media_files
from tests import micro_train_config
from tests import script_runs

pytestmark = pytest.mark.e2e   # subprocesses: SIGKILL and resume, two processes

CONFIG = str(script_runs.REPO / 'tests' / 'micro_train_config.py')
STEPS, EVERY = 24, 4


def _tfds_dataset(tmp) -> None:
  """16 captioned 256-sample tones, built into axturbo_manifest/micro under tmp/tfds."""
  lines = []
  for i in range(16):
    wav = media_files.write_wav(tmp / f'tone{i}.wav',
                                media_files.tone(256 / 16000, 16000, 300.0 + 100 * i), 16000)
    lines.append(json.dumps({'path': str(wav), 'caption': f'{i % 4 + 1} dog sounds',
                             'type': 'text_condition-audio'}) + '\n')
  (tmp / 'tones.jsonl').write_text(''.join(lines))
  c = micro_train_config.get_config()
  c.data.update(source='manifest', manifest=str(tmp / 'tones.jsonl'))
  tfds_builders.build(c, 'micro', str(tmp / 'tfds'))


def _train(workdir, tmp, *extra, devices=8):
  return script_runs.start('train.py', workdir, tmp, f'--config={CONFIG}',
                           f'--config.train.total_steps={STEPS}',
                           f'--config.train.checkpoint_every={EVERY}',
                           f'--config.train.log_every={EVERY}',
                           '--config.train.data_source=pipeline', '--config.data.source=tfds',
                           '--config.data.tfds_name=axturbo_manifest/micro',
                           f'--config.data.tfds_data_dir={tmp / "tfds"}', *extra,
                           devices=devices)


def _wait(proc, workdir, timeout=1500):
  script_runs.wait_ok(proc, workdir, timeout)


def _exported(workdir):
  return jax.tree.map(np.asarray, checkpoints.load_params(pathlib.Path(workdir) / 'export'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted 1-process x 8-device run."""
  tmp = tmp_path_factory.mktemp('train_e2e')
  _tfds_dataset(tmp)
  workdir = tmp / 'reference'
  _wait(_train(workdir, tmp), workdir)
  return tmp, _exported(workdir)


def test_sigkill_ctrl_c_and_resume_are_bit_exact(reference):
  """SIGKILL (the lock it leaves is taken over), resume, Ctrl-C (saves the next step boundary,
  one console line, exit 130), resume: the export equals the uninterrupted run's."""
  tmp, expected = reference
  workdir = tmp / 'killed'
  proc = _train(workdir, tmp)
  script_runs.sigkill_after_first_checkpoint(proc, workdir, timeout=600)
  killed = proc.pid
  steps = script_runs.checkpoint_steps(workdir)
  assert steps and max(steps) < STEPS, steps  # really mid-training
  proc = _train(workdir, tmp)
  script_runs.wait_for_checkpoint(proc, workdir, timeout=900, after=max(steps))
  os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C in a terminal does
  assert proc.wait(timeout=600) == preemption.EXIT_INTERRUPTED
  console = script_runs.log_path(workdir).read_text()
  assert 'resumed from step' in console and f'took over the lock left by pid {killed}' in console
  assert 'Traceback' not in console, console[-3000:]
  (step, line), = script_runs.stop_lines(workdir)
  assert console.rstrip().endswith(line) and 'interrupted (Ctrl-C)' in line
  assert max(script_runs.checkpoint_steps(workdir)) == step < STEPS
  _wait(_train(workdir, tmp), workdir)
  got = _exported(workdir)
  jax.tree.map(np.testing.assert_array_equal, got, expected)


def _two_processes(workdir, tmp):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return [_train(workdir, tmp, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                 f'--process_id={i}', devices=4) for i in range(2)]


@pytest.fixture(scope='module')
def two_hosts(reference):
  """One uninterrupted 2-process x 4-device run."""
  tmp, _ = reference
  workdir = tmp / 'two_hosts'
  for p in _two_processes(workdir, tmp):
    _wait(p, workdir)
  return _exported(workdir)


def test_two_processes_match_one(reference, two_hosts):
  _, expected = reference
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), two_hosts,
               expected)


def test_sigterm_on_one_of_two_processes_saves_one_step_on_both(reference, two_hosts):
  """SIGTERM to process 1 only: both save the same step and exit 75, and the resumed run equals
  the uninterrupted one bit for bit."""
  tmp, _ = reference
  workdir = tmp / 'preempted'
  procs = _two_processes(workdir, tmp)
  script_runs.wait_for_checkpoint(procs[0], workdir, timeout=900)
  procs[1].send_signal(signal.SIGTERM)
  codes = [p.wait(timeout=600) for p in procs]
  console = script_runs.log_path(workdir).read_text()
  assert codes == [preemption.EXIT_PREEMPTED] * 2, console[-3000:]
  assert 'Traceback' not in console, console[-3000:]
  (s0, l0), (s1, l1) = script_runs.stop_lines(workdir)
  assert s0 == s1 < STEPS and l0 == l1, (l0, l1)
  assert max(script_runs.checkpoint_steps(workdir)) == s0
  data = workdir / 'checkpoints' / str(s0) / 'data'
  # (orbax adds its commit_success.txt beside them)
  assert sorted(p.name for p in data.glob('*.json')) == ['process_0-of-2.json',
                                                         'process_1-of-2.json']
  for p in _two_processes(workdir, tmp):
    _wait(p, workdir)
  jax.tree.map(np.testing.assert_array_equal, _exported(workdir), two_hosts)


def test_two_processes_refuse_a_workdir_in_use(tmp_path):
  """Process 0 finds the lock held (by a live process): both processes stop with its line."""
  workdir = tmp_path / 'w'
  workdir.mkdir()
  code = ('import sys, time; from axturbo.runtime import workdir_lock; '
          'workdir_lock.acquire(sys.argv[1]); print("held", flush=True); time.sleep(900)')
  holder = subprocess.Popen([sys.executable, '-c', code, str(workdir)], text=True,
                            cwd=script_runs.REPO, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(script_runs.REPO)))
  try:
    assert holder.stdout.readline().strip() == 'held'
    codes = [p.wait(timeout=600) for p in _two_processes(workdir, tmp_path)]
    console = script_runs.log_path(workdir).read_text()
    assert codes == [1, 1], console[-3000:]
    errors = [l for l in console.splitlines() if l.startswith('error:')]
    assert len(errors) == 2 and errors[0] == errors[1], errors
    assert f'in use by pid {holder.pid} on host {socket.gethostname()}' in errors[0]
    assert 'Traceback' not in console, console[-3000:]
  finally:
    holder.kill()
    holder.wait()

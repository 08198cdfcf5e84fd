"""train.py end to end in subprocesses: SIGKILL + resume is bit-exact, 2 processes x 4 devices
(jax.distributed on localhost) match 1 process x 8 devices. The batches come from a TFDS dataset
through the grain pipeline (data.source='tfds'), so the data iterator's checkpoint and its
per-host rows are part of both checks. (Bad config overrides: tests/test_launch.py.)"""
import json
import pathlib
import socket

import jax
import numpy as np
import pytest

from axturbo.data import tfds_builders
from axturbo.runtime import checkpoints
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


def test_sigkill_and_resume_is_bit_exact(reference):
  tmp, expected = reference
  workdir = tmp / 'killed'
  proc = _train(workdir, tmp)
  script_runs.sigkill_after_first_checkpoint(proc, workdir, timeout=600)
  steps = script_runs.checkpoint_steps(workdir)
  assert steps and max(steps) < STEPS, steps  # really mid-training
  _wait(_train(workdir, tmp), workdir)
  log = script_runs.log_path(workdir).read_text()
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

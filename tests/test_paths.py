"""Paths anywhere: a gs:// workdir, TFDS data dir, export and --teacher work end to end, on a
fake GCS (tests/fake_gcs.py: gs://bucket/... is a local folder for etils.epath and for orbax's
tensorstore). Nothing of axturbo is replaced; the scripts run as the real CLI."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from axturbo.models import audiox
from axturbo.runtime import checkpoints
from tests import fake_gcs
from tests import script_runs

REPO = script_runs.REPO
CONFIG = str(REPO / 'tests' / 'micro_distill_config.py')


def test_local_paths_are_made_absolute_and_urls_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(checkpoints.as_path('run/export')) == str(tmp_path / 'run' / 'export')
  assert str(checkpoints.as_path('gs://bucket/run')) == 'gs://bucket/run'
  assert str(checkpoints.as_path('gs://bucket/run') / 'export') == 'gs://bucket/run/export'


def _script(root, tmp, script, *args):
  """`python -m tests.fake_gcs ROOT <script> <args>` (the fake installed around the real CLI)."""
  r = subprocess.run([sys.executable, '-m', 'tests.fake_gcs', str(root), script, *args],
                     cwd=tmp, env=script_runs.env(tmp), capture_output=True, text=True,
                     timeout=1500)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


@pytest.mark.e2e
def test_train_distill_and_generator_on_gs_urls(tmp_path):
  root = tmp_path / 'gcs'
  _script(root, tmp_path, str(REPO / 'train.py'), f'--config={CONFIG}',
          '--workdir=gs://bucket/teacher', '--config.train.total_steps=2')
  _script(root, tmp_path, str(REPO / 'distill.py'), f'--config={CONFIG}',
          '--teacher=gs://bucket/teacher/export', '--workdir=gs://bucket/student',
          '--config.distill.total_steps=2')
  # Nothing landed in a local 'gs:' folder (pathlib turns gs://b into gs:/b).
  assert not list(tmp_path.glob('gs:*')) and not list(REPO.glob('gs:*'))
  bucket = root / 'bucket'
  for run, log in (('teacher', 'train.log'), ('student', 'distill.log')):
    assert (bucket / run / 'export' / 'params').is_dir()
    assert sorted(p.name for p in (bucket / run / 'checkpoints').iterdir()) == ['2']
    assert 'done: step 2' in (bucket / run / log).read_text()
    assert list((bucket / run / 'tensorboard').iterdir())
    assert json.loads((bucket / run / 'run_record.json').read_text())['parameters']['total']
    assert json.loads((bucket / run / 'config.json').read_text())['model']
    assert not list((bucket / run).glob('*.partial'))
  assert (bucket / 'student' / 'teacher.json').read_text() == (
      '{"teacher": "gs://bucket/teacher/export"}')

  from axturbo.generation.generate import Generator
  with fake_gcs.installed(root):
    gen = Generator.load('gs://bucket/student/export')
    assert gen.kind == 'student'
    assert checkpoints.load_meta('gs://bucket/student/export')['teacher'] == (
        'gs://bucket/teacher/export')
  local = audiox.inference_params(checkpoints.load_params(bucket / 'student' / 'export'))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, gen.params), local)

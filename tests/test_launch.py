"""train.py / distill.py command lines: bad overrides fail with one clear line, no traceback."""
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e   # each test runs a script in a subprocess


def _run(script, *args):
  return subprocess.run([sys.executable, str(REPO / script), '--config',
                         str(REPO / 'configs' / 'tiny.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize('script', ['train.py', 'distill.py'])
def test_unknown_config_key_names_the_key(script, tmp_path):
  r = _run(script, '--workdir', str(tmp_path), '--config.train.no_such_field=1')
  assert r.returncode != 0
  assert "unknown config key 'train.no_such_field'" in r.stderr, r.stderr
  assert 'Traceback' not in r.stderr


def test_wrong_value_type_names_the_override(tmp_path):
  r = _run('train.py', '--workdir', str(tmp_path), '--config.train.optim.lr=fast')
  assert r.returncode != 0
  assert '--config.train.optim.lr=fast' in r.stderr and 'Traceback' not in r.stderr


def test_missing_coordinator_process_count_is_explained(tmp_path):
  r = _run('train.py', '--workdir', str(tmp_path), '--coordinator_address=localhost:1')
  assert r.returncode != 0
  assert '--num_processes' in r.stderr and 'Traceback' not in r.stderr


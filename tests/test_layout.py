"""`python scripts/check_layout.py` (docs/layout.md's import rules) passes on the repository and
fails, naming the file and the import, on a copy with an import that points up."""
import shutil
import subprocess
import sys

from tests import script_runs


def _check(root, tmp_path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'scripts/check_layout.py'], cwd=root,
                        env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True,
                        timeout=120)


def test_repository_layout_holds(tmp_path):
  r = _check(script_runs.REPO, tmp_path)
  assert r.returncode == 0, r.stdout + r.stderr
  assert r.stdout.strip() == 'layout ok: every import points down'


def test_an_upward_import_is_named(tmp_path):
  copy = tmp_path / 'repo'
  shutil.copytree(script_runs.REPO / 'axturbo', copy / 'axturbo',
                  ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
  shutil.copytree(script_runs.REPO / 'scripts', copy / 'scripts',
                  ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
  (copy / 'axturbo' / 'models' / 'upward.py').write_text(
      'from axturbo.generation import request\n')
  r = _check(copy, tmp_path)
  assert r.returncode == 1
  assert r.stdout.strip() == ('axturbo/models/upward.py: imports axturbo.generation '
                              '(models may not use generation)')

"""Smaller one-line errors that name their culprit (docs/failures.md, command lines)."""
import json
import subprocess
import sys

import pytest

from axturbo.generation import jobs
from tests import script_runs


def test_non_utf8_batch_and_captions_files_are_named(tmp_path):
  bad = tmp_path / 'prompts.txt'
  bad.write_bytes('a dog barks\nr\u00e9sum\u00e9\n'.encode('latin-1'))
  with pytest.raises(ValueError) as e:
    jobs.parse_batch_file(bad)
  assert str(e.value) == (f"batch file {str(bad)!r}: not UTF-8 text (byte 0xe9 at offset 13); "
                          'save it as UTF-8')
  with pytest.raises(ValueError, match=r"captions file .*: not UTF-8 text"):
    jobs.parse_captions_file(bad)


def test_empty_teacher_record_is_named(tmp_path):
  # distill.py's module defines absl flags; a fresh interpreter keeps them out of this one.
  (tmp_path / 'teacher.json').write_text('')
  code = ('import pathlib, sys; import distill; from configs import tiny\n'
          'try:\n'
          f'  distill._check_same_teacher(pathlib.Path({str(tmp_path)!r}), "/t",\n'
          '                              tiny.get_config().distill)\n'
          'except ValueError as e:\n'
          '  print(e)\n')
  r = subprocess.run([sys.executable, '-c', code], cwd=script_runs.REPO,
                     env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True,
                     timeout=300)
  assert r.stdout.strip().startswith(f'{tmp_path / "teacher.json"}: not a teacher record'), (
      r.stdout + r.stderr[-2000:])


@pytest.mark.e2e
def test_eval_duration_nan_is_named(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'axturbo.eval', '--suite=events',
                      f'--out={tmp_path / "o"}', '--duration_s=nan', '--checkpoint=/none'],
                     cwd=script_runs.REPO, env=script_runs.env(tmp_path, devices=1),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == (
      'error: --duration_s must be a finite number of seconds > 0, got nan')


@pytest.mark.e2e
def test_eval_out_that_is_a_file_is_one_line(tmp_path):
  taken = tmp_path / 'taken'
  taken.write_text('x')
  r = subprocess.run([sys.executable, '-m', 'axturbo.eval', '--suite=events', f'--out={taken}',
                      '--checkpoint=/none'], cwd=script_runs.REPO,
                     env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == (
      f'error: --out {taken}: exists and is not a directory')
  assert taken.read_text() == 'x'


def test_duplicate_manifest_lines_are_stated(tmp_path, caplog):
  from axturbo.data import manifest
  rows = [{'path': 'a.wav', 'caption': 'rain'}, {'path': 'b.wav', 'caption': 'wind'},
          {'path': 'a.wav', 'caption': 'rain'}, {'path': 'a.wav', 'caption': 'rain, loud'}]
  path = tmp_path / 'm.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  with caplog.at_level('WARNING'):
    entries = manifest.read_manifest(str(path))
  assert len(entries) == 4  # kept (a repeat may be meant as a weight), but stated
  said = [r.getMessage() for r in caplog.records if 'duplicate' in r.getMessage()]
  assert said == [f'manifest {path}: 1 duplicate line(s), kept: line 3 repeats line 1']


def test_loss_curve_after_a_resume_starts_at_step_one(tmp_path):
  """A run killed after its checkpoint at step 10 (its lines up to 15 logged) and resumed from
  10: the curve holds steps 1..10 of the first run and 11..20 of the second, each once."""
  from axturbo.train import step as train_step

  def metrics(loss):
    return {'loss': loss, 'finite': True, 'grad_norm': 1.0, 'lr': 1e-3, 'latent_std': 1.0}

  first = train_step.Reporter(tmp_path, 5, 8, None, 1.0, first_step=0, total_steps=20)
  for step in range(1, 16):
    first.record(step, metrics(100.0 + step))
  first.writer.close()  # killed: no close(), so no PNG from this run
  resumed = train_step.Reporter(tmp_path, 5, 8, None, 1.0, first_step=10, total_steps=20)
  for step in range(11, 21):
    resumed.record(step, metrics(200.0 + step))
  assert resumed.close() == tmp_path / 'loss_curve.png'
  history = json.loads((tmp_path / 'loss_history.json').read_text())
  assert history == ([[s, 100.0 + s] for s in range(1, 11)]
                     + [[s, 200.0 + s] for s in range(11, 21)])
  assert resumed.history == [(s, 200.0 + s) for s in range(11, 21)]  # this run's own lines

"""notebooks/quickstart.ipynb runs top to bottom against the tiny random checkpoint.

Every code cell is executed in order in one namespace (as a kernel would), with matplotlib's Agg
backend and `AXTURBO_CHECKPOINT` pointing at the `tiny_checkpoint` session fixture, so the test
needs neither the quickstart's outputs nor Jupyter.
"""
import json
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'quickstart.ipynb'


def _cells(kind: str) -> list[str]:
  nb = json.loads(NOTEBOOK.read_text())
  return [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == kind]


def test_notebook_is_committed_clean():
  nb = json.loads(NOTEBOOK.read_text())
  assert nb['nbformat'] == 4
  code = [c for c in nb['cells'] if c['cell_type'] == 'code']
  assert code, 'no code cells'
  for c in code:
    assert c['outputs'] == [] and c['execution_count'] is None, 'commit it without outputs'
    # A magic would need IPython to run; the notebook must also work as plain Python.
    lines = ''.join(c['source']).split('\n')
    assert not any(line.lstrip().startswith(('%', '!')) for line in lines)


@pytest.mark.e2e
def test_notebook_runs(tiny_checkpoint, monkeypatch, capsys):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  monkeypatch.setenv('AXTURBO_CHECKPOINT', str(tiny_checkpoint))
  monkeypatch.setenv('AXTURBO_TEACHER_STEPS', '2')  # the sampler's loop is one scan; 2 suffice
  monkeypatch.chdir(NOTEBOOK.parent)  # where Jupyter starts it
  namespace = {'__name__': '__main__'}
  for i, source in enumerate(_cells('code')):
    try:
      exec(compile(source, f'{NOTEBOOK.name}[code cell {i}]', 'exec'), namespace)
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f'code cell {i} raised {type(e).__name__}: {e}\n--- cell ---\n{source}')
  plt.close('all')

  out = capsys.readouterr().out
  assert str(tiny_checkpoint) in out  # the env var, not the default path, was used
  calls = namespace['calls']
  assert set(calls) >= {'text-to-audio', 'video-to-audio + text+video', 'inpainting',
                        'teacher x2', 'student x4, batch 1'}
  teacher, student = calls['teacher x2'], calls['student x4, batch 1']
  assert (teacher['sampler'], teacher['nfe']) == ('teacher', 4)  # [cond, null] x 2 steps
  assert (student['sampler'], student['nfe']) == ('student', 4)
  assert not teacher['includes_compilation'] and not student['includes_compilation']
  assert not calls['text-to-audio']['includes_compilation']
  for name, meta in calls.items():
    assert meta['latency_s']['total_s'] > 0, name
  # keep_unmasked pins the latent frames outside the span to the input's.
  inpainted = namespace['inpainted'][0].latents
  outside = namespace['outside']
  assert outside.sum() > len(outside) // 2
  assert abs(inpainted - namespace['gen'].encode(namespace['audio'])[0])[outside].max() < 1e-5
  assert 'max |output - input| of the latents outside the span' in out
  # The log-mel helper: a pure tone lands in one band, near its frequency.
  import numpy as np
  sr = namespace['SR']
  tone = np.sin(2 * np.pi * 1000.0 * np.arange(sr) / sr)[:, None].repeat(2, axis=1)
  mel = namespace['log_mel'](tone, sr)
  assert mel.shape[0] == 64
  peak_band = int(np.argmax(mel.mean(axis=1)))
  filters = namespace['cnn14'].mel_filterbank(sr, 1024, 64, 0.0, sr / 2.0)
  assert abs(np.argmax(filters[:, peak_band]) * sr / 1024 - 1000.0) < 150.0

"""Outputs claimed atomically (docs/failures.md, outputs): concurrent writers into one folder
never share a number or a name, nothing is overwritten, and a failed write (a really full
disk) leaves no 0-byte or partial file."""
import concurrent.futures
import errno
import json
import pathlib

import numpy as np
import pytest
import soundfile

from axturbo.generation import generate
from axturbo.generation import jobs
from axturbo.generation import media
from tests import small_disk


def _result(seconds: float, freq: float, sample_rate: int = 16000) -> generate.Result:
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  wave = np.stack([np.sin(2 * np.pi * freq * t)] * 2, axis=-1).astype(np.float32) * 0.3
  return generate.Result(wave, sample_rate, np.zeros((4, 2), np.float32),
                         {'inputs': {'text': f'tone {freq}'}, 'freq': freq})


def _outputs(out: pathlib.Path) -> list[str]:
  return sorted(f.name for f in out.iterdir() if not f.name.startswith('.'))


def test_concurrent_saves_into_one_folder_never_share_a_name(tmp_path):
  # Eight writers that all computed the same first free number (as eight sample.py runs started
  # together do) and save at once: each keeps its own files under its own number.
  out = tmp_path / 'out'
  out.mkdir()
  freqs = [200.0 + 100 * i for i in range(8)]

  def save(freq):
    return jobs.save_results([_result(0.25, freq)], out, [jobs.output_stem(0, 'same prompt')],
                             spectrogram=False)[0]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    records = list(pool.map(save, freqs))
  wavs = [r['files']['wav'] for r in records]
  assert len(set(wavs)) == 8
  assert sorted(pathlib.Path(w).name for w in wavs) == [f'{i:04d}_same-prompt.wav'
                                                        for i in range(8)]
  for record, freq in zip(records, freqs):
    side = json.loads(pathlib.Path(record['files']['wav']).with_suffix('.json').read_text())
    assert side['freq'] == freq and side['files'] == record['files']
    wave, _ = soundfile.read(record['files']['wav'])
    spectrum = np.abs(np.fft.rfft(wave[:, 0]))
    assert abs(np.argmax(spectrum) / 0.25 - freq) <= 4  # the writer's own tone, not another's
  assert not [f for f in out.iterdir() if f.name.startswith('.claim-')]


def test_a_taken_number_is_never_overwritten(tmp_path):
  out = tmp_path / 'out'
  first = jobs.save_results([_result(0.1, 300.0)], out, ['0000_a'], spectrogram=False)
  second = jobs.save_results([_result(0.1, 500.0)], out, ['0000_a'], spectrogram=False)
  assert pathlib.Path(first[0]['files']['wav']).name == '0000_a.wav'
  assert pathlib.Path(second[0]['files']['wav']).name == '0001_a.wav'
  assert json.loads((out / '0000_a.json').read_text())['freq'] == 300.0
  # A file of that number with another slug takes the number too (one number, one output).
  third = jobs.save_results([_result(0.1, 700.0)], out, ['0001_b'], spectrogram=False)
  assert pathlib.Path(third[0]['files']['wav']).name == '0002_b.wav'


def test_full_disk_leaves_no_partial_output(tmp_path):
  with small_disk.mounted(tmp_path / 'disk', 512) as disk:
    out = disk / 'out'
    kept = jobs.save_results([_result(0.5, 300.0)], out, ['0000_small'], spectrogram=False)
    with pytest.raises(OSError) as e:  # 10 s of 16 kHz float stereo: 1.3 MB
      jobs.save_results([_result(10.0, 300.0)], out, ['0001_big'], spectrogram=False)
    assert e.value.errno == errno.ENOSPC and str(out) in e.value.filename
    assert _outputs(out) == ['0000_small.json', '0000_small.wav']  # nothing of 0001, not 0 bytes
    assert not [f for f in out.iterdir() if f.name.startswith('.claim-')]
    assert soundfile.read(kept[0]['files']['wav'])[0].shape == (8000, 2)
    with pytest.raises(OSError) as e:
      media.write_wav(disk / 'demo.wav', _result(10.0, 300.0).waveform, 16000)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(disk / 'demo.wav')
    assert not (disk / 'demo.wav').exists()
    assert not [f for f in disk.iterdir() if f.name.endswith('.partial')]


def test_a_vanished_out_is_named_and_not_made_again(tmp_path):
  # sample.py saves with create=False: a --out removed during the run is an error naming it,
  # not a new folder that looks like the whole run's output.
  import shutil
  out = tmp_path / 'out'
  out.mkdir()
  jobs.save_results([_result(0.1, 300.0)], out, ['0000_a'], spectrogram=False, create=False)
  assert _outputs(out) == ['0000_a.json', '0000_a.wav']
  shutil.rmtree(out)
  with pytest.raises(FileNotFoundError) as e:
    jobs.save_results([_result(0.1, 500.0)], out, ['0001_b'], spectrogram=False, create=False)
  assert e.value.errno == errno.ENOENT and e.value.filename == str(out)
  assert not out.exists()


def _sample(checkpoint, out, tmp, *args):
  import subprocess
  import sys
  from tests import script_runs
  return subprocess.Popen(
      [sys.executable, 'sample.py', f'--checkpoint={checkpoint}', f'--out={out}', '--steps=1',
       '--spectrogram=false', *args], cwd=script_runs.REPO, env=script_runs.env(tmp, devices=1),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.e2e
def test_two_sample_runs_into_one_out(micro_student_checkpoint, tmp_path):
  batch = tmp_path / 'prompts.txt'
  batch.write_text('rain\nwind\nrain\n')
  out = tmp_path / 'out'
  runs = [_sample(micro_student_checkpoint, out, tmp_path, f'--batch_file={batch}', '--batch_size=1',
                  f'--seed={seed}') for seed in (0, 100)]
  for r in runs:
    _, err = r.communicate(timeout=900)
    assert r.returncode == 0, err[-3000:]
  wavs = sorted(out.glob('*.wav'))
  assert len(wavs) == 6 and len({w.name[:4] for w in wavs}) == 6, [w.name for w in wavs]
  sides = [json.loads(w.with_suffix('.json').read_text()) for w in wavs]
  assert sorted((s['seed'] - s['index']) for s in sides) == [0, 0, 0, 100, 100, 100]
  for w, s in zip(wavs, sides):
    assert s['files']['wav'] == str(w)

  # The same run on a full disk: one line naming the path and what was kept; no partial file.
  with small_disk.mounted(tmp_path / 'disk', 256) as disk:
    (disk / 'out').mkdir()
    small_disk.fill(disk)
    r = _sample(micro_student_checkpoint, disk / 'out', tmp_path, '--prompt=rain')
    _, err = r.communicate(timeout=900)
    assert r.returncode == 1 and 'Traceback' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: writing ') and 'No space left on device' in last, last
    assert str(disk / 'out') in last and 'kept' in last
    assert [f.name for f in (disk / 'out').iterdir()] in ([], [jobs.CLAIM_LOCK])


@pytest.mark.e2e
def test_train_on_a_full_disk_is_one_line(tmp_path):
  """A checkpoint write that fills a real (tmpfs) disk: one console line naming the checkpoint
  and what was kept; orbax's per-thread tracebacks go to the log file only."""
  import subprocess
  import sys
  from tests import script_runs
  with small_disk.mounted(tmp_path / 'disk', 1200) as disk:  # the micro state needs ~2.5 MB
    w = disk / 'w'
    r = subprocess.run(
        [sys.executable, 'train.py', '--config=tests/micro_train_config.py', f'--workdir={w}',
         '--config.train.log_every=10', '--config.train.checkpoint_every=10',
         '--config.train.total_steps=10'], cwd=script_runs.REPO,
        env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 1, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr, r.stderr[:3000]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: no space left on device while writing {w}/checkpoints/10;')
    # (XLA's own slow-compile alarm may add lines on a loaded machine; orbax adds none.)
    assert not [l for l in r.stderr.splitlines() if 'orbax' in l or 'future.py' in l]
    assert not (w / 'export').exists()


def _disk_bytes(folder: pathlib.Path) -> int:
  """What `folder`'s files take on their file system (whole pages, as tmpfs counts them)."""
  return sum(f.stat().st_blocks * 512 for f in folder.rglob('*') if f.is_file())


def _contents(folder: pathlib.Path) -> dict:
  return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob('*'))
          if f.is_file()}


@pytest.mark.e2e
def test_export_on_a_full_disk_is_one_line_and_keeps_the_old_export(tmp_path):
  """A finished run continued (total_steps raised) on a real tmpfs with room for its next
  checkpoint but not for the new export: one console line naming the export folder, no
  traceback, the previous export byte for byte, no partial folder left."""
  import subprocess
  import sys
  from tests import script_runs
  with small_disk.mounted(tmp_path / 'disk', 16384) as disk:
    w = disk / 'w'

    def train(total_steps):
      return subprocess.run(
          [sys.executable, 'train.py', '--config=tests/micro_train_config.py', f'--workdir={w}',
           '--config.train.log_every=10', '--config.train.checkpoint_every=10',
           f'--config.train.total_steps={total_steps}'], cwd=script_runs.REPO,
          env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True, timeout=1200)
    r = train(10)
    assert r.returncode == 0, r.stderr[-3000:]
    old = _contents(w / 'export')
    checkpoint, export = _disk_bytes(w / 'checkpoints' / '10'), _disk_bytes(w / 'export')
    # Room for checkpoint 20 (the same size as 10) and half an export.
    small_disk.fill(disk, leave_bytes=checkpoint + export // 2)
    r = train(20)
    assert r.returncode == 1, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr, r.stderr[:3000]
    assert not [l for l in r.stderr.splitlines() if 'orbax' in l or 'future.py' in l]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: no space left on device while writing {w}/export;'), last
    assert sorted(script_runs.checkpoint_steps(w)) == [10, 20]  # the checkpoint fitted
    assert _contents(w / 'export') == old
    assert [f.name for f in w.iterdir() if f.name.startswith('.export')] == []


def test_read_only_out_leaves_nothing_and_names_the_path(tmp_path):
  import subprocess
  with small_disk.mounted(tmp_path / 'disk', 512) as disk:
    out = disk / 'out'
    jobs.save_results([_result(0.1, 300.0)], out, ['0000_a'], spectrogram=False)
    r = subprocess.run(['mount', '-o', 'remount,ro', str(disk)], capture_output=True, text=True)
    if r.returncode:
      pytest.skip(f'cannot remount read-only: {r.stderr.strip()}')
    with pytest.raises(OSError) as e:
      jobs.save_results([_result(0.1, 500.0)], out, ['0001_b'], spectrogram=False)
    assert e.value.errno == errno.EROFS and str(out) in str(e.value.filename)
    assert _outputs(out) == ['0000_a.json', '0000_a.wav']


def test_late_library_async_errors_go_to_the_log_file(tmp_path):
  """The full-disk and damaged-checkpoint races behind test_train_on_a_full_disk_is_one_line
  and test_train_console_export_refresh_and_checkpoint_fallback: a late tensorstore write's
  'Event loop is closed', an error raised inside orbax's code after the run stopped, and
  an orbax coroutine never awaited all go to the run's log, never to the console; any other
  unraisable error or warning does."""
  import asyncio
  import gc
  import logging
  import sys
  import warnings
  from axturbo.runtime import launch

  class LateWriter:
    def __init__(self, loop, error=None):
      self.loop, self.error = loop, error

    def __del__(self):
      if self.error:
        raise self.error
      self.loop.call_soon_threadsafe(print)   # raises: the loop is closed

  # An object whose finalizer runs code compiled as if it were orbax's.
  orbax_file = f'{sys.prefix}/lib/site-packages/orbax/checkpoint/serialization.py'
  namespace = {}
  exec(compile('def read():\n  raise Exception("Encountered error while reading array")\n',
               orbax_file, 'exec'), namespace)
  orbax_read = type('OrbaxRead', (), {'__del__': lambda self: namespace['read']()})

  loop = asyncio.new_event_loop()
  loop.close()
  console, shown = [], []
  log = logging.FileHandler(tmp_path / 'run.log')
  previous, logger = sys.unraisablehook, launch._traceback_logger()
  level = logger.level
  logger.addHandler(log)
  logger.setLevel(logging.INFO)
  try:
    sys.unraisablehook = launch._late_writer_hook(lambda u: console.append(u.exc_value))
    LateWriter(loop)
    gc.collect()
    orbax_read()
    gc.collect()
    LateWriter(loop, ValueError('a real bug'))
    gc.collect()
    show = launch._unawaited_coroutines_to_log(lambda m, *a: shown.append(str(m)))
    show(RuntimeWarning("coroutine '_write_array' was never awaited"), RuntimeWarning, 'sys', 1)
    show(RuntimeWarning('overflow in exp'), RuntimeWarning, 'x.py', 3)
    show(UserWarning('was never awaited'), UserWarning, 'y.py', 4)
  finally:
    sys.unraisablehook = previous
    logger.removeHandler(log)
    logger.setLevel(level)
    log.close()
  assert [str(e) for e in console] == ['a real bug']
  assert shown == ['overflow in exp', 'was never awaited']
  text = (tmp_path / 'run.log').read_text()
  assert 'Event loop is closed' in text and 'Encountered error while reading array' in text
  assert "coroutine '_write_array' was never awaited" in text, text

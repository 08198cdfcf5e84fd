"""Nothing lost, nothing silent (docs/failures.md): exports and checkpoints that a crash cannot
half-write, outputs that are never overwritten, teacher/student mix-ups refused, non-finite
weights and outputs caught, and one console line for each user error."""
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest
import soundfile

from axturbo.generation import generate
from axturbo.generation import inputs
from axturbo.generation import media
from axturbo.generation import Request
from axturbo.models import audiox
from axturbo.runtime import checkpoints
from axturbo.runtime import workdir_lock
from tests import micro_train_config
from tests import script_runs

REPO = script_runs.REPO
MICRO = str(REPO / 'tests' / 'micro_train_config.py')


def _micro_params(seed=0):
  m = micro_train_config.get_config().model
  return jax.jit(lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(
      jax.random.PRNGKey(seed))


@pytest.fixture(scope='module')
def micro(tmp_path_factory):
  """Micro checkpoints: a student, a teacher, and a student with one NaN parameter."""
  m = micro_train_config.get_config().model
  params = _micro_params()
  root = tmp_path_factory.mktemp('micro')
  out = {}
  for kind in ('student', 'teacher'):
    out[kind] = checkpoints.save_params(root / kind, params, m, {'kind': kind})
  poisoned = jax.tree.map(np.array, params)
  poisoned['trunk']['project_in']['kernel'][0, 0] = np.nan
  out['nan'] = checkpoints.save_params(root / 'nan', poisoned, m, {'kind': 'student'})
  return out


def _run(*args, timeout=600, tmp=None):
  env = script_runs.env(tmp, devices=1) if tmp is not None else None
  return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _one_line_error(r, *needles):
  assert r.returncode != 0, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  for n in needles:
    assert str(n) in last, r.stderr[-2000:]


# ------------------------------------------------------------------------ the workdir lock

def _hold_lock(workdir) -> subprocess.Popen:
  """Another live process that holds `workdir`'s lock (through `workdir_lock` itself)."""
  code = ('import sys, time; from axturbo.runtime import workdir_lock; '
          'workdir_lock.acquire(sys.argv[1]); print("held", flush=True); time.sleep(900)')
  p = subprocess.Popen([sys.executable, '-c', code, str(workdir)], cwd=REPO, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE)
  assert p.stdout.readline().strip() == 'held'
  return p


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
  w = tmp_path / 'w'
  w.mkdir()
  holder = _hold_lock(w)
  try:
    with pytest.raises(workdir_lock.WorkdirInUseError,
                       match=f'in use by pid {holder.pid} on host {socket.gethostname()}'):
      workdir_lock.acquire(w)
  finally:
    holder.kill()   # dies without releasing: its record stays in the file
    holder.wait()
  with caplog.at_level(logging.WARNING):
    workdir_lock.acquire(w)
    workdir_lock.acquire(w)   # the same process again: already held
  assert caplog.text.count(f'took over the lock left by pid {holder.pid}') == 1, caplog.text
  assert json.loads((w / workdir_lock.LOCK_FILE).read_text())['pid'] == os.getpid()
  workdir_lock.release(w)
  assert (w / workdir_lock.LOCK_FILE).read_text() == ''   # released cleanly: no record


@pytest.mark.e2e
def test_train_and_distill_refuse_a_workdir_in_use(tmp_path):
  w = tmp_path / 'w'
  w.mkdir()
  holder = _hold_lock(w)
  try:
    distill_config = REPO / 'tests' / 'micro_distill_config.py'
    for script, config, extra in (('train.py', MICRO, ()),
                                  ('distill.py', distill_config, ('--teacher=/nonexistent',))):
      r = _run(script, f'--config={config}', f'--workdir={w}', *extra, timeout=300, tmp=tmp_path)
      _one_line_error(r, f'error: {w} is in use by pid {holder.pid} on host')
    assert sorted(p.name for p in w.iterdir()) == [workdir_lock.LOCK_FILE]   # no log written
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.e2e
def test_ctrl_c_before_the_step_loop_is_one_line(tmp_path):
  """Ctrl-C while the model is built and compiled (nothing new to save): one line, exit 130,
  the traceback in the log file. (During the step loop: tests/test_train_e2e.py.)"""
  w = tmp_path / 'w'
  p = subprocess.Popen([sys.executable, 'train.py', f'--config={MICRO}', f'--workdir={w}'],
                       cwd=REPO, env=script_runs.env(tmp_path, devices=1), text=True,
                       stderr=subprocess.PIPE, start_new_session=True)
  log = w / 'train.log'
  deadline = time.time() + 300
  while p.poll() is None and time.time() < deadline and not (
      log.is_file() and 'full log in' in log.read_text()):
    time.sleep(0.05)
  os.killpg(p.pid, signal.SIGINT)   # what Ctrl-C in a terminal does
  err = p.communicate(timeout=300)[1]
  assert p.returncode == 130 and 'Traceback' not in err, err[-3000:]
  assert err.strip().splitlines()[-1].startswith('interrupted (Ctrl-C): stopped'), err[-2000:]
  assert 'KeyboardInterrupt' in log.read_text()
  assert not (w / 'export').exists()


# ------------------------------------------------------------------------ exports (in-process)

def test_export_is_atomic_current_and_repairs_a_crash(tmp_path, monkeypatch):
  m = micro_train_config.get_config().model
  out = tmp_path / 'export'
  checkpoints.export(out, {'w': np.ones(3, np.float32)}, m, {'kind': 'teacher', 'step': 1})
  meta = checkpoints.load_meta(out)
  assert meta['step'] == 1 and meta['config_hash'] == checkpoints.config_hash(m)
  assert checkpoints.export_is_current(out, m, 1)
  assert not checkpoints.export_is_current(out, m, 2)

  # Killed after the params were written but before the JSON: the old export stays whole.
  def die(*_):
    raise KeyboardInterrupt
  monkeypatch.setattr(checkpoints, '_write_json', die)
  with pytest.raises(KeyboardInterrupt):
    checkpoints.export(out, {'w': np.zeros(3, np.float32)}, m, {'kind': 'teacher', 'step': 2})
  monkeypatch.undo()
  assert checkpoints.load_meta(out)['step'] == 1
  np.testing.assert_array_equal(checkpoints.load_params(out)['w'], np.ones(3))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['export']

  # A crash inside the rename window leaves the old export aside and a partial copy: the next
  # reader puts the old one back and drops the rest.
  out.rename(tmp_path / '.export.old-x')
  (tmp_path / '.export.partial-y').mkdir()
  assert checkpoints.export_is_current(out, m, 1)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['export']

  # An export missing its config (written by an older, non-atomic version) is replaced.
  (out / checkpoints.CONFIG_FILE).unlink()
  assert not checkpoints.export_is_current(out, m, 1)
  checkpoints.export(out, {'w': np.zeros(3, np.float32)}, m, {'kind': 'teacher', 'step': 1})
  assert checkpoints.export_is_current(out, m, 1)
  np.testing.assert_array_equal(checkpoints.load_params(out)['w'], np.zeros(3))

  # save_params never replaces a checkpoint unasked, nor deletes a folder that holds none.
  with pytest.raises(FileExistsError, match='already holds a checkpoint'):
    checkpoints.save_params(out, {'w': np.ones(3)}, m)
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('mine')
  with pytest.raises(FileExistsError, match='holds no checkpoint'):
    checkpoints.save_params(tmp_path / 'other', {'w': np.ones(3)}, m, replace=True)


def test_partial_reads_skip_whole_extra_subtrees_only(tmp_path):
  m = micro_train_config.get_config().model
  tree = {'trunk': {'w0': np.ones(2, np.float32), 'w1': np.ones(2, np.float32)},
          'synchformer': {'k': np.full(3, 7.0, np.float32)}}
  ckpt = checkpoints.save_params(tmp_path / 'c', tree, m, {'kind': 'teacher'})
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  # A converted checkpoint's extractor is skipped when training, and carried into exports.
  got = checkpoints.load_params(ckpt, {'trunk': jax.tree.map(spec, tree['trunk'])}, partial=True)
  assert set(got) == {'trunk'}
  assert checkpoints.with_extras(got, ckpt)['synchformer']['k'].tolist() == [7.0] * 3
  # Part of a subtree is not skipped: a deeper model never loads as its first layers.
  with pytest.raises(ValueError, match=r"'trunk' does not match the model .*w1"):
    checkpoints.load_params(ckpt, {'trunk': {'w0': spec(tree['trunk']['w0'])}}, partial=True)


@pytest.mark.slow  # the micro checkpoints: a jitted init, ~20 s on 2 cores
def test_broken_checkpoint_files_are_named(micro, tmp_path):
  ckpt = tmp_path / 'c'
  shutil.copytree(micro['student'], ckpt)
  (ckpt / checkpoints.META_FILE).write_text('{"kind": ')
  with pytest.raises(ValueError, match=r'c/meta.json: not valid JSON'):
    generate.Generator.load(ckpt)
  (ckpt / checkpoints.META_FILE).write_text('{"kind": "student"}')
  (ckpt / checkpoints.CONFIG_FILE).write_text('[1, 2')
  with pytest.raises(ValueError, match=r'c/model_config.json: not valid JSON'):
    generate.Generator.load(ckpt)
  shutil.copy(micro['student'] / checkpoints.CONFIG_FILE, ckpt / checkpoints.CONFIG_FILE)
  (ckpt / checkpoints.PARAMS_DIR / '_METADATA').write_text('not json')
  with pytest.raises(ValueError, match=r'c/params: cannot read the parameter tree'):
    generate.Generator.load(ckpt)


@pytest.mark.slow  # the micro checkpoints: a jitted init, ~20 s on 2 cores
def test_kind_mix_ups_and_non_finite_weights_are_refused(micro):
  with pytest.raises(ValueError, match='is a teacher checkpoint .*not a student'):
    generate.Generator.load(micro['teacher'], kind='student')
  with pytest.raises(ValueError, match=r'nan: non-finite parameter values in .*project_in'):
    generate.Generator.load(micro['nan'])


@pytest.mark.slow  # the micro checkpoints: a jitted init, ~20 s on 2 cores
def test_a_checkpoint_without_a_kind_is_a_student_with_a_warning(micro, tmp_path, caplog):
  ckpt = tmp_path / 'c'
  shutil.copytree(micro['student'], ckpt)
  (ckpt / checkpoints.META_FILE).write_text('{}')
  with caplog.at_level('WARNING'):
    gen = generate.Generator.load(ckpt)
  assert gen.kind == 'student'
  assert f'{ckpt}: meta.json records no kind; taking it as a student' in caplog.text


@pytest.mark.slow  # the micro checkpoints: a jitted init, ~20 s on 2 cores
def test_non_finite_generation_is_an_error_naming_the_run(micro):
  """Weights that reach generation with a NaN (not through `load`, which refuses them): the
  error names the checkpoint, the prompts, the sampler and its steps; nothing is returned."""
  from axturbo.generation import SamplerOptions
  m = micro_train_config.get_config().model
  gen = generate.Generator(m, checkpoints.load_params(micro['nan']), source='poisoned')
  with pytest.raises(FloatingPointError) as e:
    gen.generate([Request(text='rain'), Request(text='wind')], SamplerOptions(steps=1))
  assert str(e.value) == ('poisoned: non-finite audio for prompt(s) [0, 1] (student sampler, '
                          '1 steps, cfg 1)')


def test_step_lines_and_tensorboard_count_skipped_samples(tmp_path, caplog):
  from axturbo.runtime import reporting
  from axturbo.train import step as train_step

  class Stream:  # a pipeline iterator's counters (axturbo/data/pipeline.py)
    stats = {'batches': 4, 'seen': 40, 'skipped': 8, 'skip_fraction': 0.2, 'last_skipped': 'x',
             'worst': {'m.jsonl:3 /d/a.wav': 5, 'm.jsonl:9 /d/b.wav': 3}}

  metrics = {'loss': np.float32(1.0), 'finite': np.bool_(True), 'grad_norm': np.float32(1.0),
             'lr': np.float32(1e-3), 'latent_std': np.float32(1.0)}
  rep = train_step.Reporter(tmp_path, 2, 8, None, 1.0, total_steps=10, data_iter=Stream())
  with caplog.at_level('INFO'):
    rep.record(1, metrics)
    rep.record(2, {**metrics, 'finite': np.bool_(False)})
  line = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step 2 |')][0]
  assert 'SKIPPED 1 non-finite steps | skipped 8 samples (20.0 %) | eta ' in line
  rep.close()
  events = ''.join(p.read_bytes().decode('latin-1') for p in (tmp_path / 'tensorboard').iterdir())
  assert 'data/skipped_samples' in events and 'data/skip_fraction' in events
  summary = reporting.skip_summary(1, Stream.stats)
  assert summary == ('8 of 40 samples skipped (20.0 %); worst: m.jsonl:3 /d/a.wav (5x), '
                     'm.jsonl:9 /d/b.wav (3x); 1 non-finite steps skipped')


# ------------------------------------------------------------------------ inputs (in-process)

def test_cut_audio_prompt_is_stated(caplog):
  m = micro_train_config.get_config().model
  long = np.zeros((m.prompt_samples * 3, 2), np.float32)
  with caplog.at_level('WARNING'):
    inputs.prepare_item(Request(text='x', audio=long), where='prompt 0', layout=inputs.Layout(
        m, output_samples=m.audio_samples, latent_frames=m.trunk.seq_len, hop=16))
  assert 'the audio prompt lasts 0.05 s; the model reads its first 0.02 s' in caplog.text


def test_quiet_media_helpers(tmp_path, caplog):
  with caplog.at_level('WARNING'):
    sync = media.load_sync(None, 4, 8, video_path=None)   # frames from an image or an array
  assert not sync.any() and 'no sync features' not in caplog.text
  with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter('always')
    media.save_spectrogram(tmp_path / 's.png', np.zeros((1600, 2), np.float32), 16000,
                           title='rain \U0001F327 on a tin roof \U0001F3E0')
  assert not [w for w in seen if 'Glyph' in str(w.message)]


# ------------------------------------------------------------------------ CLIs (subprocesses)

@pytest.mark.e2e
def test_sample_never_overwrites_and_states_what_it_cut(micro, tmp_path):
  out = tmp_path / 'out'
  long_prompt = ' '.join(['rain'] * 20)
  runs = [_run('sample.py', f'--checkpoint={micro["student"]}', f'--prompt={p}', '--steps=1',
               f'--out={out}', '--spectrogram=false', tmp=tmp_path) for p in ('rain', long_prompt)]
  for r in runs:
    assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(p.name[:5] for p in out.glob('*.wav')) == ['0000_', '0001_']
  assert 'prompt 0 is 21 tokens long; the text encoder reads the first 8' in runs[1].stderr
  side = json.loads((out / '0000_rain.json').read_text())
  assert side['kind'] == 'student' and side['sampler'] == 'student'
  # A teacher export runs the teacher sampler unless told otherwise, and says so.
  r = _run('sample.py', f'--checkpoint={micro["teacher"]}', '--prompt=rain', '--steps=2',
           f'--out={out}', '--spectrogram=false', tmp=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  side = json.loads((out / '0002_rain.json').read_text())
  assert (side['kind'], side['sampler'], side['cfg_scale']) == ('teacher', 'teacher', 6.0)


@pytest.mark.e2e
def test_sample_errors_are_one_line(micro, tmp_path):
  a_file = tmp_path / 'taken'
  a_file.write_text('x')
  _one_line_error(_run('sample.py', f'--checkpoint={micro["student"]}', '--prompt=x',
                       f'--out={a_file}'), f'--out {a_file}: exists and is not a directory')
  _one_line_error(_run('sample.py', f'--checkpoint={micro["nan"]}', '--prompt=x',
                       f'--out={tmp_path / "o"}'), 'nan: non-finite parameter values')
  _one_line_error(_run('sample.py', f'--checkpoint={micro["teacher"]}', '--prompt=x',
                       '--teacher', '--cfg=-1', f'--out={tmp_path / "o"}'),
                  'cfg_scale must be >= 0')
  assert not list((tmp_path / 'o').glob('*.wav'))


@pytest.mark.e2e
def test_distill_refuses_a_wrong_teacher(micro, tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  config = str(REPO / 'tests' / 'micro_distill_config.py')
  cases = ((micro['student'], 'is a student', ()), (empty, 'no model_config.json', ()),
           (tmp_path / 'missing', 'no such checkpoint directory', ()),
           (micro['teacher'], 'trunk.depth: checkpoint 2 vs config 3',
            ('--config.model.trunk.depth=3',)))
  for teacher, needle, extra in cases:
    r = _run('distill.py', f'--config={config}', f'--teacher={teacher}',
             f'--workdir={tmp_path / "w"}', *extra, timeout=300)
    _one_line_error(r, needle)


@pytest.mark.e2e
@pytest.mark.parametrize('args,needle', [
    (('--config=/nonexistent/c.py',), '--config /nonexistent/c.py: no such file'),
    ((f'--config={MICRO}', '--config.data.batch_size=0'), 'config.data.batch_size must be >= 1'),
    ((f'--config={MICRO}', '--workdir={tmp}/file'), 'exists and is not a directory'),
    ((f'--config={MICRO}', '--config.mesh.shape=(2,-1,1)', '--config.mesh.dcn=(2,1,1)'),
     'config.mesh.dcn=(2, 1, 1) asks for 2 slices, but these cpu devices report none'),
])
def test_train_usage_errors_are_one_line(tmp_path, args, needle):
  (tmp_path / 'file').write_text('x')
  args = [a.format(tmp=tmp_path) for a in args]
  if not any(a.startswith('--workdir') for a in args):
    args.append(f'--workdir={tmp_path / "w"}')
  _one_line_error(_run('train.py', *args, timeout=300), needle)


def _train(workdir, tmp, *overrides):
  return _run('train.py', f'--config={MICRO}', f'--workdir={workdir}',
              '--config.train.log_every=10', '--config.train.checkpoint_every=10', *overrides,
              tmp=tmp)


@pytest.mark.e2e
def test_train_console_export_refresh_and_checkpoint_fallback(tmp_path):
  w = tmp_path / 'w'
  r = _train(w, tmp_path, '--config.train.total_steps=30')
  assert r.returncode == 0, r.stderr[-3000:]
  console = r.stderr.strip().splitlines()
  assert len(console) < 30, r.stderr
  assert 'compiling the train step' in r.stderr and 'compiled the train step in' in r.stderr
  assert not [l for l in console if 'checkpoint_manager.py' in l and l.startswith('I')]
  assert 'CheckpointManager created' in (w / 'train.log').read_text()  # orbax INFO: log only
  assert checkpoints.load_meta(w / 'export')['step'] == 30
  # Continuing a finished run refreshes its export.
  r = _train(w, tmp_path, '--config.train.total_steps=40')
  assert r.returncode == 0, r.stderr[-3000:]
  assert checkpoints.load_meta(w / 'export')['kind'] == 'teacher'
  assert checkpoints.load_meta(w / 'export')['step'] == 40
  # A damaged latest checkpoint: resume from the one before, naming both.
  for f in (w / 'checkpoints' / '40').rglob('ocdbt.process_0/d/*'):
    f.write_bytes(f.read_bytes()[:10])
  r = _train(w, tmp_path, '--config.train.total_steps=50')
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'{w}/checkpoints/40 unreadable' in r.stderr and f'{w}/checkpoints/30' in r.stderr
  assert (w / 'checkpoints' / 'unreadable.40').is_dir()
  assert checkpoints.load_meta(w / 'export')['step'] == 50
  # Rerunning the finished run unchanged: nothing compiled, the current export kept.
  export_files = {f: f.stat().st_mtime_ns for f in (w / 'export').rglob('*') if f.is_file()}
  r = _train(w, tmp_path, '--config.train.total_steps=50')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'compiling the train step' not in r.stderr
  assert f'{w}/export is already the export of step 50' in r.stderr
  assert {f: f.stat().st_mtime_ns for f in (w / 'export').rglob('*') if f.is_file()} == (
      export_files)
  # No readable checkpoint at all: one line.
  for f in (w / 'checkpoints').glob('[0-9]*/**/ocdbt.process_0/d/*'):
    f.write_bytes(f.read_bytes()[:10])
  _one_line_error(_train(w, tmp_path, '--config.train.total_steps=60'),
                  f'{w}/checkpoints: no readable checkpoint')


@pytest.mark.e2e
def test_train_stops_on_a_mostly_bad_manifest(tmp_path):
  t = np.arange(4000) / 16000
  lines = []
  for i in range(7):
    path = tmp_path / f'{i}.wav'
    if i % 7 in (1, 3, 5):   # 3 of 7 lines (43 %) cannot be decoded
      path.write_bytes(b'RIFF' + bytes(range(256)))
    else:
      soundfile.write(path, 0.5 * np.sin(2 * np.pi * 440 * t), 16000)
    lines.append({'path': str(path), 'caption': 'a tone', 'type': 'text_condition-audio',
                  'duration': 0.25, 'sample_rate': 16000})
  manifest = tmp_path / 'train.jsonl'
  manifest.write_text(''.join(json.dumps(x) + '\n' for x in lines))
  r = _train(tmp_path / 'w', tmp_path, '--config.train.data_source=pipeline',
             '--config.data.source=manifest', f'--config.data.manifest={manifest}',
             '--config.data.num_workers=0', '--config.data.batch_size=128')
  _one_line_error(r, 'over config.data.max_skip_fraction=0.1', '1.wav', '3.wav', '5.wav')
  assert not (tmp_path / 'w' / 'export').exists()


@pytest.mark.e2e
def test_eval_range_errors_come_without_the_help(tmp_path):
  r = _run('-m', 'axturbo.eval', '--clips=0', f'--out={tmp_path / "o"}', timeout=120)
  _one_line_error(r, '--clips must be >= 1, got 0')
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr

"""The record of a run (axturbo/runtime/run_record.py) and the step profile
(axturbo/runtime/profiling.py): the pure parts in process, then train.py's CLI on the micro
config: the record it writes, a resume refused under a changed model field, a resume accepted
under a changed step count that also traces two steps for TensorBoard's profile plugin."""
import json
import subprocess

import jax
import numpy as np
import pytest

from axturbo.models import audiox
from axturbo.runtime import profiling, run_record
from tests import micro_train_config
from tests import script_runs
from tests import tb_events

CONFIG = str(script_runs.REPO / 'tests' / 'micro_train_config.py')


def test_config_changes_name_each_field_and_guard_only_the_model():
  a = micro_train_config.get_config()
  b = micro_train_config.get_config()
  b.model.trunk.depth = 3
  b.train.total_steps = 9
  b.mesh.shape = (1, 1, -1)
  changes = run_record.config_changes(run_record.config_json(a), run_record.config_json(b))
  assert changes == [('mesh.shape', [1, -1, 1], [1, 1, -1]), ('model.trunk.depth', 2, 3),
                     ('train.total_steps', 6, 9)]
  assert run_record.guarded(changes) == [('model.trunk.depth', 2, 3)]
  assert run_record.describe(run_record.guarded(changes)) == 'model.trunk.depth 2 -> 3'
  b.model.extra = 1
  only_one_side = run_record.config_changes(run_record.config_json(a),
                                            run_record.config_json(b))
  assert any('<absent>' in (was, now) for _, was, now in only_one_side)


def test_parameter_overview_counts_the_initialised_model():
  c = micro_train_config.get_config()
  overview = run_record.parameter_overview(run_record.model_parameters(c))
  model = audiox.build_model(c.model)
  from flax import linen as nn
  params = nn.meta.unbox(audiox.init_params(model, c.model, jax.random.key(1)))
  assert set(overview) == set(params) | {'total'}
  for name, sub in params.items():
    leaves = jax.tree.leaves(sub)
    assert overview[name]['count'] == sum(x.size for x in leaves), name
    assert overview[name]['bytes'] == sum(x.nbytes for x in leaves), name
  assert overview['total']['count'] == sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize('steps', [(0, 2), (3, 2), (1,), (1, 2, 3), (1.0, 2), ('1', '2')])
def test_bad_profile_steps_name_the_flag(steps):
  c = micro_train_config.get_config()
  c.profile.steps = steps
  with pytest.raises(ValueError, match=r'^--config.profile.steps='):
    profiling.check_profile(c.profile)


def test_profile_steps_default_off_and_accept_one_step():
  c = micro_train_config.get_config()
  assert tuple(c.profile.steps) == ()
  profiling.check_profile(c.profile)
  c.profile.steps = (2, 2)
  profiling.check_profile(c.profile)


def test_compile_report_reads_memory_and_flops():
  x = np.ones((64, 64), np.float32)
  compiled = jax.jit(lambda a: a @ a).lower(x).compile()
  report = profiling.compile_report(compiled)
  # 64 x 64 f32 = 16 KiB in, 16 KiB out; 2 * 64^3 FLOPs.
  assert report.startswith('arguments 0.0 MiB, outputs 0.0 MiB'), report
  assert '0.000524 GFLOPs per device' in report, report


def _train(workdir, tmp, *extra):
  proc = script_runs.start('train.py', workdir, tmp, f'--config={CONFIG}',
                           '--config.train.log_every=1', '--config.train.checkpoint_every=2',
                           '--config.train.eval_every=2', '--config.train.eval_sample_steps=4',
                           *extra, devices=1)
  return proc.wait(timeout=1500)


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('run_record')
  workdir = tmp / 'w'
  assert _train(workdir, tmp, '--config.train.total_steps=2') == 0, \
      script_runs.log_path(workdir).read_text()[-3000:]
  return tmp, workdir


@pytest.mark.e2e
def test_train_writes_the_run_record(first_run):
  _, workdir = first_run
  c = micro_train_config.get_config()
  c.train.log_every, c.train.checkpoint_every, c.train.total_steps = 1, 2, 2
  c.train.eval_every, c.train.eval_sample_steps = 2, 4
  assert json.loads((workdir / 'config.json').read_text()) == run_record.config_json(c)
  record = json.loads((workdir / 'run_record.json').read_text())
  assert record['kind'] == 'train' and record['changes'] == []
  assert record['packages']['jax'] == jax.__version__
  assert record['devices'] == {'platform': 'cpu', 'kind': 'cpu', 'count': 1, 'local_count': 1,
                               'processes': 1, 'mesh': {'data': 1, 'fsdp': 1, 'tensor': 1}}
  head = subprocess.run(['git', '-C', str(script_runs.REPO), 'rev-parse', 'HEAD'],
                        capture_output=True, text=True)
  if head.returncode == 0:
    assert record['git']['commit'] == head.stdout.strip()
  params = run_record.parameter_overview(run_record.model_parameters(c))
  assert record['parameters'] == params and params['trunk']['count'] > 0
  assert not list(workdir.glob('*.partial'))


@pytest.mark.e2e
def test_resume_with_a_changed_model_field_is_refused_in_one_line(first_run):
  tmp, workdir = first_run
  before = (workdir / 'config.json').read_text()
  log = script_runs.log_path(workdir)
  start = len(log.read_text())
  assert _train(workdir, tmp, '--config.train.total_steps=2',
                '--config.model.time_shift=3.0') == 1
  console = log.read_text()[start:]
  assert 'Traceback' not in console, console
  errors = [l for l in console.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'model.time_shift 5.0 -> 3.0' in errors[0], console
  assert 'train.total_steps' not in errors[0]
  assert (workdir / 'config.json').read_text() == before


@pytest.mark.e2e
def test_resume_with_more_steps_is_accepted_logged_and_profiled(first_run):
  """train.total_steps 2 -> 4 resumes (logged, kept in the record); profile.steps=3,4 writes a
  trace of steps 3 and 4 where TensorBoard's profile plugin reads it."""
  tmp, workdir = first_run
  log = script_runs.log_path(workdir)
  start = len(log.read_text())
  assert _train(workdir, tmp, '--config.train.total_steps=4', '--config.profile.steps=3,4') == 0
  console = log.read_text()[start:]
  assert 'resumed from step 2' in console, console[-3000:]
  changed = [l for l in console.splitlines() if 'config changed since the recorded start' in l]
  assert len(changed) == 1 and 'train.total_steps 2 -> 4' in changed[0], console[-3000:]
  record = json.loads((workdir / 'run_record.json').read_text())
  fields = {c['field']: (c['was'], c['now']) for c in record['changes']}
  assert fields == {'train.total_steps': (2, 4), 'profile.steps': ([], [3, 4])}
  assert 'GFLOPs per device (XLA cost analysis)' in console and 'temporaries' in console
  traces = list((workdir / 'tensorboard' / 'plugins' / 'profile').glob('*/*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
  assert max(script_runs.checkpoint_steps(workdir)) == 4


@pytest.mark.e2e
def test_heldout_loss_every_eval_step_in_tensorboard(first_run):
  """eval_every=2 over both runs (steps 1-2, resumed 3-4): the held-out loss of steps 2 and 4
  (overall and per task present in the held-out batch) in TensorBoard, one console line
  each, the weights that moved between them moved the loss; the fixed prompt's audio and
  spectrogram at both steps."""
  _, workdir = first_run
  if max(script_runs.checkpoint_steps(workdir)) < 4:
    pytest.skip('needs test_resume_with_more_steps_is_accepted_logged_and_profiled first')
  got = tb_events.scalars(workdir / 'tensorboard')
  assert set(got['heldout/loss']) == {2, 4}, got.keys()
  per_task = [k for k in got if k.startswith('heldout/loss_')]
  assert per_task and all(set(got[k]) == {2, 4} for k in per_task), per_task
  assert all(np.isfinite(v) and v > 0 for v in got['heldout/loss'].values())
  assert got['heldout/loss'][2] != got['heldout/loss'][4]
  lines = [l for l in script_runs.log_path(workdir).read_text().splitlines()
           if 'eval step ' in l]
  assert len(lines) == 2 and 'heldout/loss ' in lines[0], lines
  # The fixed prompt (the synthetic held-out batch is all text_to_audio): 4-step Euler audio
  # of the micro model's 256 samples at 16 kHz, and its spectrogram.
  clips = tb_events.audio(workdir / 'tensorboard')
  assert set(clips) == {'samples/text_to_audio'} and set(clips['samples/text_to_audio']) == {2, 4}
  for rate, clip in clips['samples/text_to_audio'].values():
    assert rate == 16000 and clip.shape == (256,) and np.any(clip != 0)
  images = tb_events.images(workdir / 'tensorboard')['samples/text_to_audio/spectrogram']
  assert set(images) == {2, 4} and all(h == 257 and w >= 1 for h, w in images.values())


@pytest.mark.e2e
def test_distill_records_evaluates_and_profiles(first_run):
  """distill.py on the first run's teacher: its run record, the student's held-out loss and
  samples in TensorBoard, and a trace whose steps are named distill, student and fake."""
  import gzip
  tmp, teacher = first_run
  workdir = tmp / 'distill'
  proc = script_runs.start('distill.py', workdir, tmp,
                           f'--config={script_runs.REPO / "tests" / "micro_distill_config.py"}',
                           f'--teacher={teacher / "export"}', '--config.distill.total_steps=6',
                           '--config.distill.eval_every=6', '--config.profile.steps=5,6',
                           devices=1)
  script_runs.wait_ok(proc, workdir, timeout=1500)
  record = json.loads((workdir / 'run_record.json').read_text())
  assert record['kind'] == 'distill' and record['parameters']['trunk']['count'] > 0
  tb = workdir / 'tensorboard'
  assert set(tb_events.scalars(tb)['heldout/loss']) == {6}
  (rate, clip), = tb_events.audio(tb)['samples/text_to_audio'].values()
  assert rate == 16000 and clip.shape == (256,)
  assert set(tb_events.images(tb)['samples/text_to_audio/spectrogram']) == {6}
  profile = tb / 'plugins' / 'profile'
  assert len(list(profile.glob('*/*.xplane.pb'))) == 1
  for trace in profile.glob('*/*.trace.json.gz'):   # the CPU profiler also writes this
    names = {e.get('name') for e in json.load(gzip.open(trace))['traceEvents']}
    assert {'distill', 'student', 'fake'} <= names

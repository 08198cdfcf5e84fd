"""`python -m axturbo.evaluate`: the event benchmark's scoring path, the efficiency table, the
reference-set metrics and the CLI (tiny random checkpoint, a few held-out clips)."""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from axturbo.generation import sampling
from axturbo.eval import benchmark
from axturbo.eval import cnn14
from axturbo.eval import cnn14_weights
from axturbo.eval import efficiency
from axturbo.eval import manifest_suite
from configs import tiny
from tests import media_files
from tests.fixture_io import load_fixture

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def clips():
  return benchmark.heldout_clips(tiny.model_config(), 16)  # every caption style occurs


def test_heldout_clips_from_a_first_clip(clips):
  """--first_clip: clips from number `first` on, the same clips as in a longer list."""
  later = benchmark.heldout_clips(tiny.model_config(), 4, first=12)
  assert [c['seed'] for c in later] == [12, 13, 14, 15]
  assert [c['caption'] for c in later] == [c['caption'] for c in clips[12:]]
  np.testing.assert_array_equal(later[0]['waveform'], clips[12]['waveform'])
  with pytest.raises(ValueError, match='--first_clip must be >= 0'):
    benchmark.heldout_clips(tiny.model_config(), 4, first=-1)


# ---------------------------------------------------------------------------- scoring path

def test_ground_truth_scores_perfectly_and_silence_fails(clips):
  sr = tiny.model_config().sample_rate
  assert {c['caption_style'] for c in clips} == {'category', 'count', 'order', 'timestamp'}
  truth = benchmark.run_events(clips, benchmark.reference_generator(clips), sr)
  assert set(truth['metrics']) == set(benchmark.METRICS)
  assert all(v == 1.0 for v in truth['metrics'].values()), truth['metrics']
  assert len(truth['per_request']) == len(benchmark.TASKS) * len(clips)
  styles = [c['caption_style'] for c in clips]
  assert truth['num_clips']['cat'] == len(clips)
  assert truth['num_clips']['count'] == styles.count('count')
  assert truth['num_clips']['timestamp'] == styles.count('timestamp')

  silent = benchmark.run_events(clips, benchmark.silence_generator(clips), sr)
  # Silence is right only about regions the clip leaves silent (an inpainting span between
  # events); count those from the annotations.
  empty_spans = np.mean([not any(min(e, c['inpaint_span_s'][1]) - max(s, c['inpaint_span_s'][0])
                                 > benchmark.REGION_MARGIN_S for _, s, e in c['events'])
                         for c in clips])
  for key, value in silent['metrics'].items():
    assert value == (empty_spans if key == 'inpaint_region' else 0.0), key


def test_scores_catch_wrong_outputs(clips):
  sr = tiny.model_config().sample_rate
  # Every output is another clip's audio: categories are mostly wrong.
  swapped = lambda reqs: [clips[(r.clip + 1) % len(clips)]['waveform'] for r in reqs]
  res = benchmark.run_events(clips, swapped, sr, ('t2a', 'v2a'))
  assert res['metrics']['cat'] < 0.5 and res['metrics']['sync_v2a'] < 0.5
  # Inpainting that returns the prompt unchanged fails exactly when the span held an event.
  unchanged = lambda reqs: [clips[r.clip]['inpaint_waveform'] for r in reqs]
  res = benchmark.run_events(clips, unchanged, sr, ('inpaint',))
  for rec in res['per_request']:
    c = clips[rec['clip']]
    lo, hi = c['inpaint_span_s']
    had_event = any(min(e, hi) - max(s, lo) > benchmark.REGION_MARGIN_S for _, s, e in c['events'])
    assert rec['scores']['region'] == (not had_event)
  with pytest.raises(ValueError, match='unknown'):
    benchmark.make_requests(clips, ('t2a', 'speech'))


def test_t2a_takes_more_clips_than_the_other_tasks(clips):
  """clips_per_task: t2a over the first 12 clips, v2a over the first 5; each task's metrics
  count exactly its own clips, and the first clips' judgments do not depend on how many follow."""
  sr = tiny.model_config().sample_rate
  res = benchmark.run_events(clips, benchmark.reference_generator(clips), sr, ('t2a', 'v2a'),
                             {'t2a': 12, 'v2a': 5})
  assert [(r['task'], r['clip']) for r in res['per_request']] == (
      [('t2a', i) for i in range(12)] + [('v2a', i) for i in range(5)])
  styles = [c['caption_style'] for c in clips[:12]]
  assert res['num_clips']['cat'] == 12 and res['num_clips']['sync_v2a'] == 5
  assert res['num_clips']['count'] == styles.count('count')
  swapped = lambda reqs: [clips[(r.clip + 1) % len(clips)]['waveform'] for r in reqs]
  few = benchmark.run_events(clips[:5], swapped, sr, ('t2a',))
  many = benchmark.run_events(clips, swapped, sr, ('t2a',), {'t2a': 12})
  assert many['per_request'][:5] == few['per_request']
  for bad in (0, len(clips) + 1):
    with pytest.raises(ValueError, match=f't2a: {bad} clips asked, {len(clips)} made'):
      benchmark.make_requests(clips, ('t2a',), {'t2a': bad})


def test_category_split_scores_the_clips_that_hold_it_apart(clips):
  sr = tiny.model_config().sample_rate
  name = 'hiss'
  holds = [i for i, c in enumerate(clips) if name in c['annotations']['category']]
  assert 0 < len(holds) < len(clips)
  truth = benchmark.run_events(clips, benchmark.reference_generator(clips), sr, ('t2a', 'v2a'))
  split = benchmark.category_split(truth, clips, name)
  assert split['found'] == 1.0 and split['found_clips'] == len(holds)
  assert split['with']['num_clips']['cat'] == len(holds)
  assert split['without']['num_clips']['cat'] == len(clips) - len(holds)
  assert all(v in (1.0, None) for part in ('with', 'without')
             for v in split[part]['metrics'].values())
  # Outputs that never hold the category: it is found nowhere, the other clips are untouched.
  other = next(i for i, c in enumerate(clips) if name not in c['annotations']['category'])
  never = lambda reqs: [clips[r.clip if r.clip not in holds else other]['waveform']
                        for r in reqs]
  res = benchmark.run_events(clips, never, sr, ('t2a',))
  split = benchmark.category_split(res, clips, name)
  assert split['found'] == 0.0 and split['with']['metrics']['cat'] == 0.0
  assert split['without']['metrics']['cat'] == 1.0
  table = benchmark.category_markdown(split)
  assert f'| hiss detected | 0.0 | {len(holds)} |' in table
  for bad, tasks, message in (('hum', ('t2a',), "unknown category 'hum'"),
                              (name, ('v2a',), 'add t2a to --tasks')):
    with pytest.raises(ValueError, match=message):
      benchmark.check_category(bad, tasks)


# ---------------------------------------------------------------------------- efficiency

def test_nfe_follows_the_samplers():
  for steps in (1, 2, 4):
    assert efficiency.nfe('student', steps, 1.0) == sampling.student_nfe(steps) == steps
  for steps in (4, 25, 50):
    assert efficiency.nfe('teacher', steps, 6.0) == sampling.euler_nfe(steps, 6.0) == 2 * steps
  assert efficiency.nfe('teacher', 4, 1.0) == 4
  rows = efficiency.table_rows((4, 25, 50), (1, 2, 4), 6.0, True, True)
  assert [(r.model, r.steps) for r in rows] == [('teacher', 4), ('teacher', 25), ('teacher', 50),
                                                ('student', 1), ('student', 2), ('student', 4)]
  with pytest.raises(ValueError, match='steps'):
    efficiency.table_rows((), (3,), 6.0, False, True)
  rows = efficiency.table_rows((50,), (4,), 6.0, True, True, undistilled_steps=(4,))
  assert [(r.model, r.sampler, r.steps, r.cfg_scale) for r in rows] == [
      ('teacher', 'teacher', 50, 6.0), ('teacher', 'student', 4, 1.0),
      ('student', 'student', 4, 1.0)]
  assert rows[1].label == 'teacher weights, student sampler (undistilled)'
  with pytest.raises(ValueError, match='steps'):
    efficiency.table_rows((50,), (4,), 6.0, True, True, undistilled_steps=(3,))


def test_latency_statistics_come_from_the_timed_runs():
  calls, now = [], [0.0]
  durations = [9.0, 9.0, 1.0, 2.0, 4.0]  # two warm-ups (slow: compilation), three timed runs

  def fn():
    now[0] += durations[len(calls)]
    calls.append(1)
    return jax.numpy.ones(3)

  times = efficiency.time_runs(fn, runs=3, warmup=2, clock=lambda: now[0])
  assert len(calls) == 5 and times == [1.0, 2.0, 4.0]
  stats = efficiency.latency_stats(times, duration_s=2.0)
  assert stats['latency_mean_s'] == pytest.approx(7 / 3)
  assert stats['latency_std_s'] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
  assert stats['rtf'] == pytest.approx(7 / 6)
  with pytest.raises(ValueError):
    efficiency.time_runs(fn, runs=0, warmup=0)


# ---------------------------------------------------------------------------- manifest suite

def test_reference_metrics_from_a_manifest(tmp_path):
  m = tiny.model_config()
  lines = []
  for i, freq in enumerate((220.0, 440.0, 880.0, 1760.0)):
    wav = media_files.write_wav(tmp_path / f'{i}.wav', media_files.tone(1.5, 8000, freq), 8000)
    lines.append(json.dumps({'path': wav.name, 'caption': f'tone {i}',
                             'type': 'text_condition-audio'}))
  (tmp_path / 'm.jsonl').write_text('\n'.join(lines) + '\n')
  refs, requests = manifest_suite.load_references(str(tmp_path / 'm.jsonl'), str(tmp_path), m,
                                                  32768, 3)
  assert len(refs) == len(requests) == 3
  assert refs[0]['waveform'].shape == (32768, 2) and requests[2].inputs == {'text': 'tone 2'}
  assert not refs[0]['waveform'][24000:].any()  # 1.5 s of audio, zero-padded

  # A small CNN14 with the reference implementation's weights (tests/test_cnn14.py, 8 kHz).
  sd, _, _, meta = load_fixture('cnn14_small')
  cfg = meta['config']
  model = cnn14.Cnn14(sample_rate=cfg['sample_rate'], window_size=cfg['window_size'],
                      hop_size=cfg['hop_size'], mel_bins=cfg['mel_bins'], fmin=cfg['fmin'],
                      fmax=cfg['fmax'], num_classes=cfg['classes_num'],
                      channels=tuple(meta['channels']), embed_dim=meta['embed_dim'])
  params = cnn14_weights.cnn14_params_from_state_dict(sd, model)
  embed = manifest_suite.module_embedder(model, params, m.sample_rate, batch_size=2)
  ref_waves = [r['waveform'] for r in refs]
  same = manifest_suite.reference_metrics(ref_waves, ref_waves, embed)
  # Identical sets: FD 0, KL only the toolbox's eps term (1e-6 per class).
  assert same['fd'] < 1e-9 and abs(same['kl_softmax']) < 1e-3 and same['num_clips'] == 3
  noise = [np.random.default_rng(i).standard_normal((32768, 2)).astype(np.float32) * 0.3
           for i in range(3)]
  other = manifest_suite.reference_metrics(ref_waves, noise, embed)
  # (This small random-weight CNN14 barely separates inputs; the scale of FD is its own.)
  assert other['fd'] > 1e-5 and np.isfinite(other['kl_sigmoid'])
  # One clip per IS split (3 clips -> 3 splits): each split's marginal is its posterior.
  assert other['is_mean'] == pytest.approx(1.0) and other['num_clips'] == 3
  with pytest.raises(ValueError, match='paired'):
    manifest_suite.reference_metrics(ref_waves, noise[:2], embed)


# ---------------------------------------------------------------------------- CLI

def _cli(tmp_path, *args, module='axturbo.evaluate'):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=str(tmp_path.parent / 'jax_cache_evaluate'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def _eval(tmp_path, *args):
  """`python -m axturbo.eval` (the current name; _cli alone runs the former one)."""
  return _cli(tmp_path, *args, module='axturbo.eval')


_SAMPLER_FLAGS = {'steps', 'teacher', 'cfg', 'seed'}
_SUITE_FLAGS = {   # what each suite reads (axturbo/eval/cli.py), and --compile_cache
    'events': {'checkpoint', 'out', 'clips', 't2a_clips', 'first_clip', 'tasks', 'category',
               'batch_size',
               'keep_unmasked', 'duration_s', 'compile_cache'} | _SAMPLER_FLAGS,
    'manifest': {'checkpoint', 'out', 'manifest', 'root', 'cnn14', 'cnn14_variant', 'clips',
                 'batch_size', 'compile_cache'} | _SAMPLER_FLAGS,
    'long': {'checkpoint', 'out', 'clips', 'tasks', 'batch_size', 'long_windows', 'overlap_s',
             'tail_s', 'join', 'short_s', 'compile_cache'} | _SAMPLER_FLAGS,
    'table': {'teacher_checkpoint', 'student_checkpoint', 'out', 'teacher_steps',
              'student_steps', 'undistilled_steps', 'cfg', 'runs', 'warmup', 'clips',
              't2a_clips', 'tasks', 'batch_size', 'seed', 'duration_s', 'compile_cache'},
}


@pytest.mark.e2e
@pytest.mark.parametrize('args', [('events', '--help'), ('manifest', '-h'), ('long', '--help'),
                                  ('table', '--help'), ('--help', '--suite=table')])
def test_cli_help_per_suite_lists_its_flags_only(tmp_path, args):
  suite = next(a.split('=')[-1] for a in args if a.split('=')[-1] in _SUITE_FLAGS)
  run = _eval(tmp_path, *args)
  assert run.returncode == 0, run.stderr[-2000:]
  listed = re.findall(r'^  --(?:\[no\])?(\w+):', run.stdout, re.MULTILINE)
  assert len(listed) == len(set(listed)) and set(listed) == _SUITE_FLAGS[suite], run.stdout
  assert run.stdout.startswith(f'python -m axturbo.eval {suite} [flags]')


@pytest.mark.e2e
def test_cli_help_without_a_suite_lists_the_suites(tmp_path):
  run = _eval(tmp_path, '--help')
  assert run.returncode == 0, run.stderr[-2000:]
  for suite in _SUITE_FLAGS:
    assert f'python -m axturbo.eval {suite} ' in run.stdout
  assert 'python -m axturbo.eval SUITE --help' in run.stdout


@pytest.mark.e2e
@pytest.mark.parametrize('args,line', [
    (('table', '--checkpoint=x'),
     'error: --checkpoint is not a flag of the table suite (it is one of events, manifest, long); '
     'see python -m axturbo.eval table --help'),
    (('--suite=events', '--runs=3'),
     'error: --runs is not a flag of the events suite (it is one of table); '
     'see python -m axturbo.eval events --help'),
    (('--warmup=2',),   # no suite: events, as before the suite word
     'error: --warmup is not a flag of the events suite (it is one of table); '
     'see python -m axturbo.eval events --help'),
    (('long', '--keep_unmasked'),
     'error: --keep_unmasked is not a flag of the long suite (it is one of events); '
     'see python -m axturbo.eval long --help'),
    (('leaderboard',), "error: unknown suite 'leaderboard': choose from events, manifest, long, "
     'table'),
    (('events', '--suite=table'), "error: suite 'events' and --suite table disagree"),
])
def test_cli_refuses_another_suites_flag_in_one_line(tmp_path, args, line):
  run = _eval(tmp_path, *args, f'--out={tmp_path / "o"}')
  assert run.returncode == 1 and run.stderr.strip() == line, run.stderr[-2000:]
  assert not (tmp_path / 'o').exists()


def _check_fractions(metrics, counts):
  for key, value in metrics.items():
    if counts[key]:
      assert 0.0 <= value <= 1.0, key
    else:
      assert value is None, key


@pytest.mark.e2e
def test_cli_events_suite(tiny_checkpoint, tmp_path):
  out = tmp_path / 'events'
  run = _eval(tmp_path, 'events', f'--checkpoint={tiny_checkpoint}', '--clips=3',
             '--steps=1', '--batch_size=3', '--seed=1', f'--out={out}')
  assert run.returncode == 0, run.stderr[-3000:]
  res = json.loads((out / 'results.json').read_text())
  assert res['sampler'] == 'student' and res['steps'] == 1 and res['nfe'] == 1
  assert res['clips'] == 3 and len(res['per_request']) == 3 * len(benchmark.TASKS)
  assert set(res['metrics']) == set(res['num_clips']) == set(benchmark.METRICS)
  _check_fractions(res['metrics'], res['num_clips'])
  md = (out / 'results.md').read_text()
  for _, header in benchmark.METRICS.values():
    assert f'| {header} |' in md


@pytest.mark.e2e
def test_cli_table_suite(tiny_checkpoint, tiny_teacher_checkpoint, tmp_path):
  out = tmp_path / 'table'
  run = _cli(tmp_path, '--suite=table', f'--teacher_checkpoint={tiny_teacher_checkpoint}',
             f'--student_checkpoint={tiny_checkpoint}', '--teacher_steps=1',
             '--undistilled_steps=1', '--student_steps=1', '--runs=2', '--warmup=1', '--clips=2',
             '--t2a_clips=5', '--batch_size=2', '--tasks=t2a,v2a', f'--out={out}')
  assert run.returncode == 0, run.stderr[-3000:]
  res = json.loads((out / 'results.json').read_text())
  rows = res['rows']
  assert [(r['model'], r['sampler'], r['steps'], r['nfe']) for r in rows] == [
      ('teacher', 'teacher', 1, 2), ('teacher', 'student', 1, 1), ('student', 'student', 1, 1)]
  for r in rows:
    assert len(r['runs_s']) == 2 and r['latency_mean_s'] == pytest.approx(np.mean(r['runs_s']))
    assert r['rtf'] == pytest.approx(r['latency_mean_s'] / r['duration_s'])
    assert set(r['metrics']) == {'cat', 'count', 'order', 'timestamp', 'sync_v2a'}
    assert r['num_clips']['cat'] == 5 and r['num_clips']['sync_v2a'] == 2
    _check_fractions(r['metrics'], r['num_clips'])
  assert (res['clips'], res['t2a_clips']) == (2, 5)
  md = (out / 'results.md').read_text()
  assert '(5 held-out clips for t2a, 2 for the other tasks,' in md
  assert '| Model | Steps | NFE | Latency (s) | RTF | Cat (%)' in md
  assert md.count('| teacher (Euler, CFG 6) | 1 | 2 |') == 1
  assert md.count('| student (denoise-renoise) | 1 | 1 |') == 1
  assert md.count('| teacher weights, student sampler (undistilled) | 1 | 1 |') == 1


@pytest.mark.e2e
@pytest.mark.parametrize('args,message', [
    (('--suite=events', '--checkpoint={tmp}/nowhere'), 'nowhere'),
    (('--suite=leaderboard', '--checkpoint={tmp}'), 'suite'),
    (('--suite=manifest', '--checkpoint={tmp}', '--manifest={tmp}/m.jsonl'), '--cnn14'),
    (('--suite=table',), '--teacher_checkpoint'),
])
def test_cli_bad_input_exits_with_a_message(tmp_path, args, message):
  run = _cli(tmp_path, *[a.format(tmp=tmp_path) for a in args], f'--out={tmp_path / "o"}')
  assert run.returncode != 0
  assert message in run.stderr and 'Traceback' not in run.stderr, run.stderr[-2000:]
  assert not (tmp_path / 'o' / 'results.json').exists()

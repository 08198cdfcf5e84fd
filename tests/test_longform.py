"""Long-form generation (issue 14): window arithmetic, prompt hand-over, exact latent seams,
crossfades, determinism, video and sync per window, the seam metric, and one-line errors.

The model tests run the micro model (tests/micro_train_config.py: 16-frame windows of 16
samples, the frame-wise patch codec) with random weights.
"""
import json
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from axturbo.eval import long_clips
from axturbo.eval import seams
from axturbo.generation import generate
from axturbo.generation import LongOptions, Request, SamplerOptions, generate_long
from axturbo.generation import jobs
from axturbo.generation import longform
from axturbo.models import audiox
from tests import media_files
from tests import micro_train_config
from tests import script_runs

HOP = 16           # the micro model's latent frame, in samples
WINDOW = 16        # frames per micro window (256 samples)


# ------------------------------------------------------------------------------ the plan

@pytest.mark.parametrize('samples,overlap', [(256, 8), (100, 8), (257, 8), (1000, 8),
                                             (256 + 3 * 128, 8), (5000, 1), (5000, 15)])
def test_windows_cover_the_clip_and_the_last_one_is_partial(samples, overlap):
  windows = longform.plan_windows(samples, WINDOW, overlap, HOP)
  length, stride = WINDOW * HOP, (WINDOW - overlap) * HOP
  assert windows[0].start == windows[0].new_start == 0
  assert all(w.length == length for w in windows)
  for a, b in zip(windows, windows[1:]):
    assert b.start - a.start == stride and b.overlap == overlap * HOP
    assert a.stop == a.end == b.new_start        # the contributions tile the clip
  assert windows[-1].stop == samples <= windows[-1].end
  if len(windows) > 1:
    assert windows[-2].end < samples             # no window more than needed
  partial = (samples - length) % stride if samples > length else samples - length
  assert (windows[-1].end > samples) == (partial != 0)


def test_check_duration_defaults_and_one_line_errors():
  kw = dict(sample_rate=16000, window_frames=WINDOW, hop=HOP)
  assert longform.check_duration(0.05, None, **kw) == (800, 16, 8)
  assert longform.check_duration(0.05, 0.004, 0.002, **kw) == (800, 14, 4)
  for args, needle in [((0.0, None), 'at least one latent frame (0.001 s)'),
                       ((-1.0, None), 'at least one latent frame'),
                       ((float('nan'), None), 'finite'),
                       (('abc', None), 'number of seconds'),
                       ((1e6, None), 'at most 256 windows'),
                       ((1.0, 0.0), 'overlap_s must lie between'),
                       ((1.0, 0.016), 'overlap_s must lie between'),
                       ((1.0, None, 0.016), 'tail_s must lie between')]:
    with pytest.raises(ValueError, match=re.escape(needle)) as e:
      longform.check_duration(*args, **kw)
    assert '\n' not in str(e.value)


def test_segments_checked_and_read_at_the_middle_of_each_new_part():
  segs = longform.check_segments([(0, 'rain'), ('0.02', 'thunder'), (0.04, 'wind')], 0.05)
  assert segs == [(0.0, 'rain'), (0.02, 'thunder'), (0.04, 'wind')]
  windows = longform.plan_windows(800, WINDOW, 8, HOP)   # new parts start 0, 256, 384, ...
  middles = [0.5 * (w.new_start + w.stop) / 16000 for w in windows]
  want = ['rain' if m < 0.02 else 'thunder' if m < 0.04 else 'wind' for m in middles]
  assert longform.window_captions(windows, segs, 16000) == want
  for segments, needle in [([(0, 'a'), (0.03, 'b'), (0.02, 'c')], 'segment 2 starts at 0.02 s, '
                            'not after segment 1 (0.03 s)'),
                           ([(0, 'a'), (0, 'b')], 'not after segment 0'),
                           ([(0.01, 'a')], 'the first segment must start at 0 s'),
                           ([(0, 'a'), (0.05, 'b')], 'segment 1 starts at 0.05 s, at or past the '
                            'end of the 0.05 s clip'),
                           ([(0, 'a', 'b')], 'segment 0: must be a (start_s, caption) pair'),
                           ([], 'non-empty list')]:
    with pytest.raises(ValueError, match=re.escape(needle)):
      longform.check_segments(segments, 0.05)


def test_captions_file(tmp_path):
  path = tmp_path / 'c.txt'
  path.write_text('# a storm\n0: rain\n\n20 s: thunder and rain\n40.5: rain fading\n')
  assert jobs.parse_captions_file(path) == [(0.0, 'rain'), (20.0, 'thunder and rain'),
                                            (40.5, 'rain fading')]
  path.write_text('0: rain\nthunder\n')
  with pytest.raises(ValueError, match=r'c.txt:2: expected "START_S: caption"'):
    jobs.parse_captions_file(path)


def test_joins_and_gains_arithmetic():
  windows = longform.plan_windows(700, WINDOW, 4, HOP)     # overlap 64 samples, stride 192
  waves = [np.full((256, 2), k + 1.0, np.float32) for k in range(len(windows))]
  clip = longform.crossfade(waves, windows, 700)
  assert clip.shape == (700, 2)
  for w in windows[1:]:
    t = (np.arange(w.overlap) + 0.5) / w.overlap
    want = w.index * np.cos(0.5 * np.pi * t) + (w.index + 1) * np.sin(0.5 * np.pi * t)
    np.testing.assert_allclose(clip[w.start:w.new_start, 0], want, rtol=1e-6)
  for w in windows:
    assert (clip[w.new_start:min(w.stop, 700) - (64 if w.stop < 700 else 0), 0]
            == w.index + 1).all()
  latents = [np.full((WINDOW, 3), float(k), np.float32) for k in range(len(windows))]
  joined = longform.join_latents(latents, windows, HOP)
  assert joined.shape == (windows[-1].end // HOP, 3)
  for w in windows:
    assert (joined[w.new_start // HOP:w.end // HOP] == w.index).all()
  known, mask = longform.pinned_prompt_latents(np.arange(2 * WINDOW * 3, dtype=np.float32)
                                               .reshape(2, WINDOW, 3), windows[1], HOP)
  assert mask[:, :4].all() and not mask[:, 4:].any()
  np.testing.assert_array_equal(known[:, :4], np.arange(2 * WINDOW * 3).reshape(2, WINDOW, 3)
                                [:, WINDOW - 4:])
  loud = np.concatenate([np.full((256, 1), 0.5), np.full((444, 1), 0.1)]).astype(np.float32)
  gains = longform.window_gains(loud, windows)
  assert gains[0] == pytest.approx(2.0) and gains[-1] == pytest.approx(10.0)
  assert np.abs(np.diff(gains)).max() < 1.0          # ramps over overlaps, no step
  assert np.abs(longform.normalize_per_window(loud, windows)).max() <= 1.0


def test_video_rows_and_sync_rate():
  x = np.arange(5)[:, None]
  np.testing.assert_array_equal(longform.take_rows(x, 3, 4, pad='edge')[:, 0], [3, 4, 4, 4])
  np.testing.assert_array_equal(longform.take_rows(x, 3, 4, pad='zero')[:, 0], [3, 4, 0, 0])
  w = longform.plan_windows(16000 * 30, 64, 32, 512)[3]         # tiny: starts at 3.072 s
  assert longform.first_frame(w, 16000, 5) == 15
  m = micro_train_config.get_config().model
  assert longform.sync_rate(m) == m.video.sync_len * m.video_fps / m.video.num_frames


# ------------------------------------------------------------------------------ seam metric

def test_seam_metric_sees_clicks_and_cuts_not_smooth_audio():
  sr, n = 16000, 16000 * 4
  t = np.arange(n) / sr
  smooth = (0.5 * np.sin(2 * np.pi * 440 * t) * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t)))
  smooth = np.stack([smooth, smooth], -1).astype(np.float32)
  at = [int(s * sr) for s in (0.7, 1.45, 2.2, 2.95, 3.6)]
  clean = seams.seam_report(smooth, at, sr)
  assert clean['median_ratio'] < 2 and clean['over_2x'] == 0
  clicks = smooth.copy()
  clicks[at] += 0.9
  assert seams.seam_report(clicks, at, sr)['median_ratio'] > 10
  cut = smooth.copy()   # the tone jumps to another pitch at every seam
  for k, (a, b) in enumerate(zip(at, at[1:] + [n])):
    cut[a:b] = 0.5 * np.sin(2 * np.pi * (440 + 150 * (k + 1)) * t[a:b])[:, None]
  assert seams.seam_report(cut, at, sr)['median_ratio'] > 2
  quiet = np.zeros((n, 2), np.float32)
  assert seams.seam_report(quiet, at, sr)['ratios'] is None      # no sounding frame: no ratio
  records = [longform.window_record(w, sr) for w in longform.plan_windows(n, 128, 64, 256)]
  assert seams.seam_positions(records) == [w['samples'][1] for w in records[1:]]


def test_long_benchmark_clips_and_segments():
  from configs import tiny
  m = tiny.model_config()
  clips = long_clips.long_clips(m, 3, 8.2)
  limit = long_clips.longest_training_event_s(m)
  assert limit == pytest.approx(1.8)
  for c in clips:
    assert c['duration_s'] == pytest.approx(8.2) and c['split'] == 'heldout'
    assert all(e - s <= limit + 1e-9 for _, s, e in c['events'])
    segs = longform.check_segments(long_clips.event_segments(c), c['duration_s'])
    assert len(segs) == len(c['events'])
    for (start, caption), (cat, s, _) in zip(segs, c['events']):
      assert start <= s and caption == f'A single {cat} sound.'
  windows = long_clips.plan(16000, 64, 512, 8.2, None)
  positions = [w.new_start for w in windows[1:]]
  assert long_clips.seam_events(clips[0], positions) <= len(clips[0]['events'])


# ------------------------------------------------------------------------------ the model

@pytest.fixture(scope='module')
def micro_gen():
  c = micro_train_config.get_config()
  m = c.model
  m.video_fps = 500     # several video frames per 16 ms window, so windows see different frames
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(
      jax.random.PRNGKey(0))
  return generate.Generator(m, params)


def _spy(gen, monkeypatch):
  """Records every window's generate() arguments and results; runs the real method."""
  calls = []
  real = gen.generate

  def spy(requests, options=None, **kwargs):
    out = real(requests, options, **kwargs)
    calls.append((requests, dict(kwargs, options=options), out))
    return out
  monkeypatch.setattr(gen, 'generate', spy)
  return calls


@pytest.mark.slow
def test_latent_join_hands_over_prompts_and_keeps_seams_exact(micro_gen, monkeypatch):
  gen = micro_gen
  calls = _spy(gen, monkeypatch)
  dog = Request(text='a dog barks', duration_s=0.05)
  [r] = generate_long(gen, dog, SamplerOptions(seed=3))     # 800 samples: 6 windows
  windows = longform.windows_from_records(r.meta['windows'])
  assert len(calls) == len(windows) == r.meta['num_windows'] == 6
  assert r.waveform.shape == (800, 2) and r.meta['duration_s'] == 0.05
  for (_, kw, prev), (reqs_next, kw_next, out), w in zip(calls, calls[1:], windows[1:]):
    # window k's prompt is window k-1's decoded tail, exactly
    np.testing.assert_array_equal(reqs_next[0].audio,
                                  prev[0].waveform[w.length - w.overlap:w.length])
    assert reqs_next[0].continuation and kw_next['inputs'].prompt_pad == 'left'
    # its first overlap frames are window k-1's last ones, bit for bit
    o, u = w.overlap // HOP, w.length // HOP
    np.testing.assert_array_equal(out[0].latents[:o], prev[0].latents[u - o:u])
    assert kw_next['options'].seed == 3 + w.index * longform.WINDOW_SEED_STRIDE
  joined = longform.join_latents([c[2][0].latents for c in calls], windows, HOP)
  np.testing.assert_array_equal(r.latents, joined)
  np.testing.assert_array_equal(r.waveform, gen.decode(joined[None])[0, :800])
  # the patch codec decodes frame by frame: on each side of every seam the clip is what the
  # window made itself
  for w, (_, _, out) in zip(windows, calls):
    np.testing.assert_allclose(r.waveform[w.new_start:w.stop],
                               out[0].waveform[w.new_start - w.start:w.stop - w.start],
                               rtol=0, atol=1e-6)
  again = generate_long(gen, dog, SamplerOptions(seed=3))[0]
  np.testing.assert_array_equal(again.waveform, r.waveform)
  other = generate_long(gen, dog, SamplerOptions(seed=4))[0]
  assert not np.allclose(other.waveform, r.waveform)
  # window 0 is the one-window generation
  first = gen.generate(Request(text='a dog barks'), SamplerOptions(seed=3))[0]
  np.testing.assert_array_equal(calls[0][2][0].latents, first.latents)


@pytest.mark.slow
def test_crossfade_batch_segments_video_and_short_clips(micro_gen, monkeypatch):
  gen = micro_gen
  m = gen.config
  calls = _spy(gen, monkeypatch)
  frames = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), np.uint8)
  sync = np.random.default_rng(1).standard_normal((60, m.video.sync_dim)).astype(np.float32)
  segments = [[(0, 'rain'), (0.02, 'thunder')], [(0, 'wind')]]
  crossfade = LongOptions(join='crossfade', overlap_s=0.004)
  out = generate_long(gen, [Request(segments=segments[0], duration_s=0.04, video=frames, sync=sync),
                            Request(segments=segments[1], duration_s=0.04, video=frames)],
                      SamplerOptions(seed=7), long=crossfade)
  windows = longform.windows_from_records(out[0].meta['windows'])
  assert len(windows) == 3 and out[0].meta['overlap_s'] == 0.004
  assert [w['caption'] for w in out[0].meta['windows']] == ['rain', 'thunder', 'thunder']
  assert [w['caption'] for w in out[1].meta['windows']] == ['wind'] * 3
  rate = longform.sync_rate(m)
  for (reqs, kw, res), w in zip(calls, windows):
    first = longform.first_frame(w, m.sample_rate, m.video_fps)
    np.testing.assert_array_equal(reqs[0].video, longform.take_rows(frames, first,
                                                                    m.video.num_frames,
                                                                    pad='edge'))
    np.testing.assert_array_equal(reqs[0].sync, longform.take_rows(
        sync, int(round(w.start / m.sample_rate * rate)), m.video.sync_len, pad='zero'))
    assert not reqs[1].sync.any()                 # no features: zeros for every window
    assert kw['known_latents'] is None            # the crossfade samples whole windows
  for k, w in enumerate(windows):   # each window alone after its overlap
    own = calls[k][2][1].waveform
    stop = w.stop - (windows[k + 1].overlap if k + 1 < len(windows) else 0)
    np.testing.assert_array_equal(out[1].waveform[w.new_start:stop],
                                  own[w.new_start - w.start:stop - w.start])
  alone = generate_long(gen, Request(segments=segments[1], duration_s=0.04, video=frames),
                        SamplerOptions(seed=8), long=crossfade)[0]
  np.testing.assert_allclose(alone.waveform, out[1].waveform, rtol=1e-4, atol=1e-4)
  # shorter than a window
  short = generate_long(gen, Request(text='rain', duration_s=0.01), SamplerOptions(seed=2))[0]
  assert short.meta['num_windows'] == 1 and short.waveform.shape == (160, 2)
  np.testing.assert_array_equal(
      short.waveform, gen.generate(Request(text='rain'), SamplerOptions(seed=2))[0].waveform[:160])
  teacher = generate_long(gen, Request(text='rain', duration_s=0.03),
                          SamplerOptions(sampler='teacher', steps=2, seed=2))[0]
  assert teacher.meta['sampler'] == 'teacher' and np.isfinite(teacher.waveform).all()


@pytest.mark.slow
def test_bad_long_requests_give_one_line_errors(micro_gen):
  gen = micro_gen
  for kwargs, needle in [
      (dict(duration_s=0.0), 'duration_s must be at least one latent frame'),
      (dict(duration_s=1e5), 'at most 256 windows per clip'),
      (dict(duration_s=0.05, segments=[(0, 'a'), (0.04, 'b'), (0.02, 'c')]),
       'segment 2 starts at 0.02 s, not after segment 1'),
      (dict(duration_s=0.05, segments=[(0, 'a'), (0.06, 'b')]), 'at or past the end'),
      (dict(duration_s=0.05, join='glue'), "join must be one of ('latent', 'crossfade')"),
      (dict(duration_s=0.05, inpaint=(0.0, 0.01), audio=np.zeros(256)), 'inpainting'),
      (dict(duration_s=0.05, audio=np.zeros(64)), 'set continuation=True')]:
    text = '' if 'segments' in kwargs else 'rain'
    long = {k: kwargs.pop(k) for k in ('join',) if k in kwargs}
    with pytest.raises(ValueError, match=re.escape(needle)) as e:
      generate_long(gen, Request(text=text, **kwargs), long=LongOptions(**long))
    assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match='text or segments, not both'):
    Request(text='rain', segments=[(0, 'a')], duration_s=0.05)


@pytest.mark.e2e
def test_sample_py_long_clip_and_errors(micro_student_checkpoint, tmp_path):
  ckpt = micro_student_checkpoint
  audio = tmp_path / 'a.wav'
  media_files.write_wav(audio, media_files.tone(0.05, 16000), 16000)
  captions = tmp_path / 'captions.txt'
  captions.write_text('0: rain\n0.03 s: thunder and rain\n')
  env = script_runs.env(tmp_path, devices=1)

  def run(*args):
    return subprocess.run([sys.executable, 'sample.py', f'--checkpoint={ckpt}', *args],
                          cwd=script_runs.REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  r = run(f'--captions_file={captions}', '--duration=0.06', '--steps=1', '--normalize=window',
          f'--out={tmp_path / "out"}')
  assert r.returncode == 0, r.stderr[-3000:]
  [sidecar] = (tmp_path / 'out').glob('*.json')
  rec = json.loads(sidecar.read_text())
  assert rec['num_windows'] == 7 and rec['normalize'] == 'window'
  assert [w['caption'] for w in rec['windows']][:2] == ['rain', 'rain']
  assert rec['windows'][-1]['caption'] == 'thunder and rain'
  assert len(rec['seams']['seam_flux']) == 6 and set(rec['files']) == {'wav', 'spectrogram'}
  # Each error names the flag the user gave (--duration, not the API's duration_s).
  for args, needle in [
      (['--prompt=x', '--duration=0'], '--duration must be at least one latent frame'),
      (['--prompt=x', '--duration=nan'], '--duration must be a finite number of seconds'),
      (['--prompt=x', '--duration=1e6'], '--duration (1e+06 s) needs '),
      (['--prompt=x', '--duration=0.05', '--overlap=1'], '--overlap must lie between'),
      (['--prompt=x', '--duration=0.05', f'--audio={audio}'],
       '--audio with --duration is the beginning of the clip: give --continue too'),
      (['--prompt=x', '--duration=0.05', f'--audio={audio}', '--inpaint=0:0.01'],
       '--inpaint edits one window; give it without --duration'),
      ([f'--captions_file={captions}', '--duration=0.02'], 'at or past the end'),
      (['--prompt=x', '--overlap=0.01'], 'give --duration too')]:
    r = run(*args, '--steps=1', f'--out={tmp_path / "bad"}')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and needle in last, last
    assert 'Request.' not in last and '_s ' not in last, last


def test_batch_line_long_clip_errors_name_the_line_keys():
  with pytest.raises(ValueError, match=re.escape('"inpaint" edits one window; give it without '
                                                 '--duration')):
    jobs.job_request({'text': 'x', 'audio': 'a.wav', 'inpaint': (0, 1)}, duration_s=5.0)
  with pytest.raises(ValueError, match=re.escape('"audio" with --duration is the beginning of '
                                                 'the clip: give "continuation": true too')):
    jobs.job_request({'text': 'x', 'audio': 'a.wav'}, duration_s=5.0)
  assert jobs.job_request({'text': 'x', 'audio': 'a.wav', 'continuation': True},
                          duration_s=5.0).duration_s == 5.0


def test_check_duration_names_the_callers_values():
  kw = dict(sample_rate=16000, window_frames=WINDOW, hop=HOP, names=('--d', '--o', '--t'))
  for args, want in [((0.0, None), '--d must be at least one latent frame (0.001 s), got 0 s'),
                     ((1e6, None), '--d (1e+06 s) needs'),
                     ((1.0, 0.0), '--o must lie between'),
                     ((1.0, None, float('nan')), '--t must be a finite number of seconds')]:
    with pytest.raises(ValueError) as e:
      longform.check_duration(*args, **kw)
    assert str(e.value).startswith(want), str(e.value)


@pytest.mark.e2e
def test_eval_long_suite_errors_name_its_flags(micro_student_checkpoint, tmp_path):
  """The long suite's clip length comes from --long_windows: an error about it names that flag,
  not --duration_s, a flag of the other suites the user never gave."""
  def run(*args):
    r = subprocess.run([sys.executable, '-m', 'axturbo.eval', '--suite=long',
                        f'--checkpoint={micro_student_checkpoint}', '--clips=1', f'--out={tmp_path / "o"}',
                        *args], cwd=script_runs.REPO, env=script_runs.env(tmp_path, devices=1),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    return r.stderr.strip().splitlines()[-1]
  assert run('--long_windows=1e6').startswith(
      'error: --long_windows=1e+06 (16000 s) needs 1999999 windows of 0.016 s')
  assert run('--long_windows=nan') == (
      'error: --long_windows must be a finite number of windows > 0, got nan')
  assert run('--overlap_s=1').startswith('error: --overlap_s must lie between')


@pytest.mark.e2e
def test_cli_long_suite(tiny_checkpoint, tmp_path):
  out = tmp_path / 'long'
  r = subprocess.run(
      [sys.executable, '-m', 'axturbo.eval', '--suite=long', f'--checkpoint={tiny_checkpoint}',
       '--clips=2', '--batch_size=2', '--steps=1', '--long_windows=1.5', '--tail_s=0.16',
       f'--out={out}'], cwd=script_runs.REPO, env=script_runs.env(tmp_path, devices=1),
      capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out / 'results.json').read_text())
  assert res['duration_s'] == pytest.approx(3.1) and res['short_s'] == pytest.approx(1.0)
  assert res['num_windows'] == 3 and res['tail_s'] == 0.16
  assert len(res['per_request']) == 2 * len(long_clips.LONG_TASKS)
  assert set(res['summary']) == set(long_clips.LONG_TASKS)
  for task, row in res['summary'].items():
    for key in ('cat', 'count', 'order', 'timestamp', 'sync', 'seam_median_ratio'):
      assert row.get(key) is None or row[key] >= 0.0, (task, key)
  md = (out / 'results.md').read_text()
  assert '| long_segments | 2 |' in md and 'span a seam' in md

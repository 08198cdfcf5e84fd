"""The synthetic-event detector and the T2A-bench / video-sync scores on the embedded dataset."""
import numpy as np
import pytest

from axturbo.data import event_sounds
from axturbo.data.embedded import make_clip
from axturbo.eval import event_detector, event_scores

SEEDS = range(24)


def _matches(detected, truth, tol=0.1):
  return ([c for c, _, _ in detected] == [c for c, _, _ in truth]
          and all(abs(d[1] - t[1]) <= tol and abs(d[2] - t[2]) <= tol
                  for d, t in zip(detected, truth)))


@pytest.mark.parametrize('sample_rate,noise,gain,split', [
    (16000, 0.0, 1.0, 'train'),
    (16000, 0.02, 1.0, 'heldout'),   # ~25 dB SNR white noise
    (16000, 0.005, 0.05, 'train'),   # quiet clip with a noise floor
    (44100, 0.005, 0.5, 'heldout'),
])
def test_recovers_ground_truth_events(sample_rate, noise, gain, split):
  rng = np.random.default_rng(0)
  seeds = SEEDS if sample_rate == 16000 else range(8)
  hits = 0
  for seed in seeds:
    clip = make_clip(seed, split, sample_rate=sample_rate)
    wave = gain * (clip['waveform'] + noise * rng.standard_normal(clip['waveform'].shape))
    hits += _matches(event_detector.detect_events(wave, sample_rate), clip['events'])
  assert hits == len(seeds)


def test_every_category_is_recognized_alone():
  rng = np.random.default_rng(1)
  sr = 16000
  for cat in event_sounds.CATEGORIES:
    wave = np.zeros((2 * sr, 2), np.float32)
    wave[int(0.5 * sr):int(1.5 * sr)] = event_sounds.render_event(cat, sr, sr, rng)
    (detected,) = event_detector.detect_events(wave, sr)
    assert detected[0] == cat
    assert abs(detected[1] - 0.5) < 0.03 and abs(detected[2] - 1.5) < 0.1


def test_silence_and_noise_give_no_events():
  rng = np.random.default_rng(2)
  sr = 16000
  assert event_detector.detect_events(np.zeros((4 * sr, 2)), sr) == []
  assert event_detector.detect_events(1e-7 * rng.standard_normal((4 * sr, 2)), sr) == []
  found = sum(len(event_detector.detect_events(a * rng.standard_normal((4 * sr, 2)), sr))
              for a in (0.01, 0.1, 0.5, 0.9) for _ in range(3))
  assert found == 0
  # Broadband clicks and a chord spreading energy across bands are not events either.
  clicks = np.zeros(4 * sr)
  clicks[::sr // 7] = 1.0
  assert event_detector.detect_events(clicks, sr) == []
  t = np.arange(2 * sr) / sr
  chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 1200.0, 5500.0))
  assert event_detector.detect_events(chord, sr) == []


def test_frame_labels_reject_out_of_band_tones():
  sr = 16000
  t = np.arange(sr) / sr
  in_band = np.sin(2 * np.pi * 1200 * t)    # 'alarm' band
  between = np.sin(2 * np.pi * 1500 * t)    # between 'alarm' and 'warble'
  _, active, labels = event_detector.frame_labels(in_band, sr)
  assert active.all() and (labels[5:-5] == event_sounds.CATEGORIES.index('alarm')).all()
  _, active, labels = event_detector.frame_labels(between, sr)
  assert active.all() and (labels == -1).all()
  assert event_detector.detect_events(between, sr) == []


def test_scores_perfect_on_ground_truth_and_zero_on_noise():
  rng = np.random.default_rng(3)
  truth_scores, noise_scores, styles = [], [], []
  for seed in SEEDS:
    clip = make_clip(seed)
    detected = event_detector.detect_events(clip['waveform'], 16000)
    truth_scores.append(event_scores.score_clip(detected, clip['annotations']))
    noise = 0.3 * rng.standard_normal(clip['waveform'].shape)
    noise_scores.append(event_scores.score_clip(event_detector.detect_events(noise, 16000),
                                                clip['annotations']))
    styles.append(clip['caption_style'])
  truth = event_scores.aggregate(truth_scores, styles)
  assert all(v == 100.0 for v in truth.values()), truth
  noise = event_scores.aggregate(noise_scores, styles)
  assert all(v == 0.0 or np.isnan(v) for v in noise.values()), noise


def test_score_clip_catches_each_kind_of_mistake():
  ann = {'category': {'tone': 2, 'bell': 1},
         'SED': [['tone', 0.5, 1.0], ['bell', 1.5, 2.5], ['tone', 3.0, 3.5]],
         'time_relation': ['tone', 'bell', 'tone']}
  right = [('tone', 0.5, 1.0), ('bell', 1.5, 2.5), ('tone', 3.0, 3.5)]
  assert all(event_scores.score_clip(right, ann).values())
  # Within the 1 s tolerance; an extra category fails only cat_exact.
  shifted = [('tone', 1.3, 1.8), ('bell', 2.0, 3.0), ('tone', 3.9, 4.4), ('hiss', 5.0, 5.5)]
  s = event_scores.score_clip(shifted, ann)
  assert s == {'cat': True, 'cat_exact': False, 'count': True, 'order': True, 'timestamp': True}
  late = [('tone', 0.5, 1.0), ('tone', 3.0, 3.5), ('bell', 3.6, 4.4)]   # bell 2.1 s late
  s = event_scores.score_clip(late, ann)
  assert s['timestamp'] is False and s['order'] is False and s['count'] and s['cat']
  missing = [('tone', 0.5, 1.0), ('bell', 1.5, 2.5)]
  s = event_scores.score_clip(missing, ann)
  assert s == {'cat': True, 'cat_exact': True, 'count': False, 'order': False,
               'timestamp': False}
  assert event_scores.score_clip([('tone', 0.5, 1.0)], ann)['cat'] is False


def test_aggregate_uses_caption_style_for_task_metrics():
  scores = [dict(cat=True, cat_exact=True, count=False, order=True, timestamp=False),
            dict(cat=False, cat_exact=False, count=True, order=False, timestamp=True)]
  out = event_scores.aggregate(scores, ['count', 'timestamp'])
  assert out['cat'] == 50.0 and out['count'] == 0.0 and out['timestamp'] == 100.0
  assert np.isnan(out['order']) and out['order_all'] == 50.0
  with pytest.raises(ValueError, match='caption styles'):
    event_scores.aggregate(scores, ['count'])


def test_video_sync():
  synced = late = 0
  for seed in range(12):
    clip = make_clip(seed)
    visual = event_scores.video_events(clip['video'], clip['fps'])
    assert [c for c, _, _ in visual] == [c for c, _, _ in clip['events']]
    detected = event_detector.detect_events(clip['waveform'], 16000)
    synced += event_scores.video_sync(detected, clip['video'], clip['fps'])['synced']
    # Sound delayed by 0.3 s (1.5 frames): every event starts after its shape appeared.
    delayed = [(c, s + 0.3, e + 0.3) for c, s, e in detected]
    r = event_scores.video_sync(delayed, clip['video'], clip['fps'])
    late += r['synced']
    assert r['recall'] == 0.0
  assert synced == 12 and late == 0
  empty = np.zeros((10, 32, 32, 3), np.uint8)
  assert event_scores.video_sync([], empty, 5)['synced'] == 1.0
  assert event_scores.video_sync([('tone', 0.0, 1.0)], empty, 5)['precision'] == 0.0

"""Tests of the embedded procedural dataset (axturbo/data) and its CLI writer.

No fixtures: every check recomputes its expectation from the clip's own event
list or from the signal definitions in axturbo/data/event_sounds.py.
"""
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from axturbo.data import embedded
from axturbo.data import event_sounds as ev
from axturbo.data import event_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAME_RE = re.compile('|'.join(sorted(map(re.escape, ev.CATEGORIES), key=len, reverse=True)))


def _clips(split='train', n=60, **kw):
  return [embedded.make_clip(s, split, **kw) for s in range(n)]


def _names_in(text):
  return _NAME_RE.findall(text.lower())


def test_deterministic_and_resolution_independent():
  a, b = embedded.make_clip(7), embedded.make_clip(7)
  for key in ('waveform', 'video', 'inpaint_waveform', 'continuation_prompt', 'event_samples'):
    assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
  assert a['captions'] == b['captions'] and a['annotations'] == b['annotations']
  hi = embedded.make_clip(7, sample_rate=44100, duration_s=4.0, video_size=64)
  assert hi['events'] == a['events'] and hi['captions'] == a['captions']
  assert hi['waveform'].shape == (4 * 44100, 2) and hi['video'].shape == (20, 64, 64, 3)


def test_different_seeds_and_splits_differ():
  waves = [embedded.make_clip(s)['waveform'].tobytes() for s in range(20)]
  assert len(set(waves)) == 20
  assert len({tuple(embedded.make_clip(s)['events']) for s in range(20)}) >= 18
  train, held = embedded.make_clip(3, 'train'), embedded.make_clip(3, 'heldout')
  assert train['events'] != held['events']


@pytest.mark.parametrize('duration', [4.0, 10.0])
def test_events_layout_and_annotations(duration):
  for clip in _clips(n=80, duration_s=duration):
    evts, sr = clip['events'], clip['sample_rate']
    assert 1 <= len(evts) <= 5
    prev_end = -1.0
    for (cat, s, e), (ss, se) in zip(evts, clip['event_samples']):
      assert cat in ev.CATEGORIES
      assert 0.0 < s < e < duration and e - s >= 0.3 - 1e-9
      assert s - prev_end >= 0.2 - 1e-9  # non-overlapping, ordered
      assert (ss, se) == (round(s * sr), round(e * sr))
      prev_end = e
    seq = [c for c, _, _ in evts]
    ann = clip['annotations']
    assert ann['category'] == {c: seq.count(c) for c in dict.fromkeys(seq)}
    assert all(1 <= m <= 5 for m in ann['category'].values())
    assert ann['SED'] == [list(e) for e in evts]
    assert ann['time_relation'] == seq and ann['caption'] == clip['caption']


@pytest.mark.parametrize('sample_rate', [16000, 44100])
def test_energy_exactly_during_events(sample_rate):
  for clip in _clips(n=30, sample_rate=sample_rate):
    wave = clip['waveform']
    assert wave.dtype == np.float32 and wave.shape == (4 * sample_rate, 2)
    inside = np.zeros(wave.shape[0], bool)
    for s, e in clip['event_samples']:
      inside[s:e] = True
      assert np.sqrt(np.mean(wave[s:e] ** 2)) > 0.025  # quietest: ticking
    assert not np.any(wave[~inside])
    assert np.max(np.abs(wave)) <= 0.7


def test_categories_spectrally_distinct():
  bands = sorted(ev.CATEGORY_BANDS.values())
  assert all(hi < lo for (_, hi), (lo, _) in zip(bands, bands[1:]))
  assert bands[-1][1] < 0.5 * ev.MIN_SAMPLE_RATE
  for sr in (16000, 44100):
    for cat in ev.CATEGORIES:
      for pitch in (1 - ev.PITCH_JITTER, 1.0, 1 + ev.PITCH_JITTER):
        for dur in (0.3, 2.0):
          x = ev.render_mono(cat, int(dur * sr), sr, pitch)
          assert ev.classify_frequency(ev.dominant_frequency(x, sr)) == cat, (sr, cat, pitch)
  hits = total = 0
  for clip in _clips(n=40):
    for (cat, _, _), (s, e) in zip(clip['events'], clip['event_samples']):
      seg = clip['waveform'][s:e]
      hits += ev.classify_frequency(ev.dominant_frequency(seg, clip['sample_rate'])) == cat
      total += 1
  assert hits == total


def test_video_shape_exactly_in_event_frames():
  colours = [look[0] for look in event_video.CATEGORY_LOOKS.values()]
  assert len(set(colours)) == len(colours) and set(event_video.CATEGORY_LOOKS) == set(ev.CATEGORIES)
  for clip in _clips(n=40, fps=5, video_size=32):
    frames = clip['video']
    assert frames.dtype == np.uint8 and frames.shape == (20, 32, 32, 3)
    for f in range(frames.shape[0]):
      t = f / 5.0
      active = [c for c, s, e in clip['events'] if s - 1e-9 <= t < e - 1e-9]
      lit = frames[f].reshape(-1, 3)
      lit = lit[lit.any(axis=-1)]
      if not active:
        assert lit.size == 0, (clip['seed'], f)
      else:
        colour = event_video.CATEGORY_LOOKS[active[0]][0]
        assert len(lit) >= 50 and np.all(lit == colour), (clip['seed'], f)


def test_caption_styles_and_content():
  chosen, templates = set(), {s: set() for s in embedded.CAPTION_STYLES}
  for clip in _clips(n=150):
    chosen.add(clip['caption_style'])
    caps, seq = clip['captions'], [c for c, _, _ in clip['events']]
    assert clip['caption'] == caps[clip['caption_style']]
    for style, text in caps.items():
      assert set(_names_in(text)) == set(seq), (style, text)
      templates[style].add(re.sub(r'\d', '', _NAME_RE.sub('', text.lower())).split()[0])
    for cat, m in clip['annotations']['category'].items():
      n_word, times = ('one', 'two', 'three', 'four', 'five')[m - 1], embedded._TIMES[m - 1]
      assert any(p in caps['count'].lower() for p in
                 (f'{n_word} {cat} sound', f'{cat} {times}', f'{n_word} instance')), caps['count']
    if len(seq) > 1:
      assert _names_in(caps['order']) == seq
    assert _names_in(caps['timestamp']) == seq
    stamps = [float(x) for x in re.findall(r'\d+\.\d', caps['timestamp'])]
    assert stamps == [t for _, s, e in clip['events'] for t in (s, e)]
  assert chosen == set(embedded.CAPTION_STYLES)
  assert {s: len(v) for s, v in templates.items()} == {
      'category': 3, 'count': 3, 'order': 6, 'timestamp': 3}, templates
  forced = embedded.make_clip(5, caption_style='timestamp')
  assert forced['caption'] == forced['captions']['timestamp']


def test_caption_style_weights():
  uniform = embedded.caption_style_probs(dict(category=2, count=2, order=2, timestamp=2))
  assert uniform is None  # the original draw: existing datasets keep their captions
  probs = embedded.caption_style_probs(dict(count=3, order=1))
  assert probs == (0.0, 0.75, 0.25, 0.0)
  base, weighted = _clips(n=80), _clips(n=80, caption_probs=probs)
  for a, b in zip(base, weighted):
    # Only the drawn style moves: events, audio, video and every caption text stay.
    assert a['captions'] == b['captions'] and a['events'] == b['events']
    assert np.array_equal(a['waveform'], b['waveform'])
    assert np.array_equal(a['video'], b['video'])
    assert np.array_equal(a['inpaint_span'], b['inpaint_span'])
  styles = [c['caption_style'] for c in weighted]
  assert set(styles) == {'count', 'order'} and 45 <= styles.count('count') <= 75, styles
  with pytest.raises(ValueError, match="unknown styles \\['speech'\\]"):
    embedded.caption_style_probs(dict(speech=1.0))
  for bad in (dict(count=-1.0, order=2.0), dict(count=0.0)):
    with pytest.raises(ValueError, match='data.caption_styles'):
      embedded.caption_style_probs(bad)
  with pytest.raises(ValueError, match='caption_probs'):
    embedded.make_clip(0, caption_probs=(0.5, 0.5))


def test_category_filter_keeps_categories_out_of_or_in_every_training_clip():
  exclude = embedded.category_filter(exclude=('hiss',))
  require = embedded.category_filter(require=('hiss', 'bell'))
  assert exclude == (('hiss',), (), 1.0) and require == ((), ('bell', 'hiss'), 1.0)
  assert embedded.category_filter() is None
  base = _clips(n=80, duration_s=2.0)
  assert sum('hiss' in c['annotations']['category'] for c in base) >= 8  # the filter has work
  without = _clips(n=80, duration_s=2.0, categories=exclude)
  assert not any('hiss' in c['annotations']['category'] for c in without)
  held = _clips(n=80, duration_s=2.0, categories=require)
  assert all({'hiss', 'bell'} & set(c['annotations']['category']) for c in held)
  # Every clip is still a valid training clip of 1-4 events (2 s), and its captions name it.
  for c in without + held:
    assert embedded.combination_split(c['annotations']['category']) == 'train'
    assert 1 <= len(c['events']) <= 4
    assert set(_names_in(c['captions']['category'])) == set(c['annotations']['category'])
  assert {len(c['annotations']['category']) for c in held} == {1, 2, 3, 4}
  with pytest.raises(ValueError, match="data.exclude_categories: unknown categories \\['hum'\\]"):
    embedded.category_filter(exclude=('hum',))
  with pytest.raises(ValueError, match="share \\['hiss'\\]"):
    embedded.category_filter(exclude=('hiss',), require=('hiss', 'bell'))
  # The set {buzz} is held out, so buzz alone with every other category excluded leaves none.
  assert embedded.combination_split(['buzz']) == 'heldout'
  with pytest.raises(ValueError, match='leave no training clip'):
    embedded.category_filter(exclude=set(ev.CATEGORIES) - {'buzz'}, require=('buzz',))


def test_require_share_mixes_required_and_ordinary_clips():
  """data.require_share: that share of the training clips hold a required category, the others
  are ordinary clips (no excluded category); each clip's draw is fixed by its seed."""
  mixed = embedded.category_filter(exclude=('bell',), require=('hiss',), share=0.5)
  assert mixed == (('bell',), ('hiss',), 0.5)
  clips = _clips(n=120, duration_s=2.0, categories=mixed)
  with_hiss = sum('hiss' in c['annotations']['category'] for c in clips)
  # Half the seeds require hiss; about 1 in 5 of the others holds it by chance.
  assert 55 <= with_hiss <= 95
  assert not any('bell' in c['annotations']['category'] for c in clips)
  assert all(embedded.combination_split(c['annotations']['category']) == 'train' for c in clips)
  again = _clips(n=120, duration_s=2.0, categories=mixed)
  assert [c['caption'] for c in again] == [c['caption'] for c in clips]
  for share, require in ((0.0, ('hiss',)), (1.5, ('hiss',)), (0.5, ())):
    with pytest.raises(ValueError, match=f'data.require_share={share:g}'):
      embedded.category_filter(exclude=('bell',), require=require, share=share)


def test_heldout_prompts_disjoint_from_train():
  for size in range(1, 6):
    train, held = embedded.allowed_sets('train', size), embedded.allowed_sets('heldout', size)
    assert train and held and not set(train) & set(held)
    assert len(train) + len(held) == len(list(itertools.combinations(ev.CATEGORIES, size)))
  seen = {}
  for split in embedded.SPLITS:
    clips = _clips(split, n=150)
    for clip in clips:
      assert embedded.combination_split(clip['annotations']['category']) == split
    seen[split] = {c for clip in clips for c in clip['captions'].values()}
  assert not seen['train'] & seen['heldout']


def test_inpainting_and_continuation_prompts():
  for clip in _clips(n=30):
    wave, inp = clip['waveform'], clip['inpaint_waveform']
    s, e = clip['inpaint_span']
    sr, n = clip['sample_rate'], wave.shape[0]
    assert 0 <= s < e <= n and 0.2 * n - 1 <= e - s <= 0.4 * n + 1
    assert (s, e) == tuple(round(t * sr) for t in clip['inpaint_span_s'])
    assert not np.any(inp[s:e])
    assert np.array_equal(inp[:s], wave[:s]) and np.array_equal(inp[e:], wave[e:])
    cont = clip['continuation_prompt']
    assert cont.shape == (round(clip['continuation_s'] * sr), 2)
    assert np.array_equal(cont, wave[:cont.shape[0]])


def test_dataset_indexing():
  data = embedded.EmbeddedDataset('heldout', 4, 16000, 2.0, seed_offset=10, video_size=16)
  assert len(data) == 4 and len(list(data)) == 4
  ref = embedded.make_clip(13, 'heldout', 16000, 2.0, video_size=16)
  assert np.array_equal(data[3]['waveform'], ref['waveform'])
  assert data[-1]['captions'] == ref['captions'] and data[-1]['video'].shape == (10, 16, 16, 3)
  with pytest.raises(IndexError):
    data[4]


@pytest.mark.parametrize('kwargs', [
    dict(split='test'), dict(sample_rate=8000), dict(duration_s=0.3),
    dict(duration_s=4.05), dict(video_size=4), dict(caption_style='free')])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    embedded.make_clip(0, **kwargs)
  with pytest.raises(ValueError):
    ev.render_mono('violin', 100, 16000)


@pytest.mark.e2e
def test_cli_writes_parseable_manifest(tmp_path):
  out = str(tmp_path / 'emb')
  cmd = [sys.executable, '-m', 'data.build_embedded', '--out', out,
         '--split', 'train', '--num_clips', '3', '--sample_rate', '16000', '--duration', '4']
  subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=120)
  with open(os.path.join(out, 'train_manifest.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 3
  for i, row in enumerate(rows):
    clip = embedded.make_clip(i, 'train', 16000, 4.0)
    assert row['caption'] == {'audio_caption': {'0-4': clip['caption']}}
    assert (row['duration'], row['sample_rate'], row['type']) == (4, 16000, 'text_condition-audio')
    assert row['sync_feature'] is None
    assert row['category'] == clip['annotations']['category']
    assert row['SED'] == clip['annotations']['SED']
    assert row['time_relation'] == clip['annotations']['time_relation']
    audio, sr = soundfile.read(row['path'], dtype='float32')
    assert sr == 16000 and np.array_equal(audio, clip['waveform'])
    assert np.array_equal(np.load(row['video_path']), clip['video'])

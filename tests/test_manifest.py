"""Manifest / folder sources: decoding real files as the official loader, and bad input."""
import json

import av
import numpy as np
import pytest
import soundfile

from axturbo.data import audio_io
from axturbo.data import manifest
from axturbo.data import pipeline
from axturbo.data import video_io
from axturbo.data.tokenizers import build_tokenizer
from configs import tiny
from tests import optional

SR = 16000


def _sine(seconds, sr, freq=440.0, channels=1):
  t = np.arange(int(seconds * sr)) / sr
  x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
  return np.stack([x] * channels, 1) if channels > 1 else x


def _write_mp4(path, num_frames, fps=10, height=48, width=64):
  """Frame i is solid grey 8 * i, so a decoded frame tells which source frame it was."""
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('libx264', rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    for i in range(num_frames):
      img = np.full((height, width, 3), 8 * i, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def _line(path, kind='text_condition-audio', video='', sync=None, caption='a caption'):
  return {'path': str(path), 'video_path': str(video), 'sync_feature': sync and str(sync),
          'duration': 10, 'caption': {'audio_caption': {'0-10': caption}},
          'sample_rate': 32000, 'type': kind}


@pytest.fixture(scope='module')
def media(tmp_path_factory):
  d = tmp_path_factory.mktemp('media')
  soundfile.write(d / 'sine22k.wav', _sine(3.0, 22050), 22050, subtype='FLOAT')
  soundfile.write(d / 'long.wav', _sine(5.0, SR, 300.0), SR, subtype='FLOAT')
  soundfile.write(d / 'short.flac', _sine(1.5, SR, 500.0, channels=2), SR)
  _write_mp4(d / 'clip.mp4', 30)
  _write_mp4(d / 'short.mp4', 6)
  np.save(d / 'sync.npy', np.random.default_rng(0).normal(size=(24, 64)).astype(np.float32))
  nan = np.zeros((1, 24, 64), np.float32)
  nan[0, 3, 5] = np.nan
  np.save(d / 'nan_sync.npy', nan)
  (d / 'corrupt.wav').write_bytes(b'RIFF' + bytes(range(256)) * 4)
  whole = (d / 'long.wav').read_bytes()
  (d / 'truncated.wav').write_bytes(whole[:len(whole) // 3])
  return d


def _config(**data):
  c = tiny.get_config()
  c.data.update(source='manifest', read_threads=1, read_buffer=4, **data)
  return c


def _write_manifest(path, lines):
  path.write_text(''.join(json.dumps(x) + '\n' for x in lines))
  return str(path)


def test_crop_offsets_follow_the_official_grid():
  # 100 Hz, 11 s crops on a 10 s grid: a 10 s file is never cropped; a 25 s file (<= 20 s rule
  # off) starts at 0 or 10 (20 would overrun); a 45 s file keeps starts with >= 15 s left.
  assert audio_io.crop_offsets(1000, 1100, 100) == []
  assert audio_io.crop_offsets(2500, 1100, 100) == [0, 1000]
  assert audio_io.crop_offsets(4500, 1100, 100) == [0, 1000, 2000, 3000]
  assert audio_io.crop_offsets(1900, 1100, 100) == [0]


def test_pad_conventions():
  x = np.arange(1, 7, dtype=np.float32).reshape(3, 2)
  np.testing.assert_array_equal(audio_io.pad_crop(x, 1, 4), [[3, 4], [5, 6], [0, 0], [0, 0]])
  np.testing.assert_array_equal(audio_io.left_pad_crop(x, 4), [[0, 0], [1, 2], [3, 4], [5, 6]])
  np.testing.assert_array_equal(audio_io.left_pad_crop(x, 2), [[1, 2], [3, 4]])
  np.testing.assert_array_equal(audio_io.to_stereo(x[:, :1]), [[1, 1], [3, 3], [5, 5]])


def test_window_caption():
  cap = {'audio_caption': {'0-10': 'first', '10-20': 'second'}}
  assert manifest.window_caption(cap, 10.0) == 'second'
  assert manifest.window_caption(cap, 5.0) == 'first'
  assert manifest.window_caption('plain', 0.0) == 'plain'


def test_decode_resamples_to_stereo_and_pads(media):
  c = _config()
  entry = manifest.read_manifest(_write_manifest(media / 'a.jsonl', [_line(media / 'sine22k.wav')]))[0]
  base = manifest.decode_entry(entry, np.random.default_rng(0), c.model, c.data, True)
  want = _sine(3.0, SR)[:32768]   # 440 Hz at 16 kHz: resampling is band-limited and exact-ish
  assert base['audio'].shape == (32768, 2) and int(base['length']) == 32768
  np.testing.assert_allclose(base['audio'][100:-100, 0], want[100:-100], atol=2e-3)
  np.testing.assert_array_equal(base['audio'][:, 0], base['audio'][:, 1])
  assert base['caption'] == 'a caption' and int(base['task']) == 0
  assert not base['frames'].any() and not base['prompt'].any()


def test_random_crop_starts_on_the_grid(media):
  c = _config()   # tiny: 1 s grid; 5 s file, 2.048 s crop -> offsets 0, 1, 2 s
  entry = manifest.read_manifest(_write_manifest(media / 'b.jsonl', [_line(media / 'long.wav')]))[0]
  full = _sine(5.0, SR, 300.0)
  starts = set()
  for seed in range(12):
    base = manifest.decode_entry(entry, np.random.default_rng(seed), c.model, c.data, True)
    start = [s for s in (0, 16000, 32000)
             if np.array_equal(base['audio'][:, 0], full[s:s + 32768])]
    assert len(start) == 1
    starts.add(start[0])
  assert starts == {0, 16000, 32000}


def test_video_frames_sync_and_audio_prompt(media):
  c = _config()
  lines = [_line(media / 'short.flac', 'text+video_condition-audio', media / 'clip.mp4',
                 media / 'sync.npy'),
           _line(media / 'short.flac', 'uni_condition-audio', media / 'short.mp4')]
  e1, e2 = manifest.read_manifest(_write_manifest(media / 'v.jsonl', lines))
  b1 = manifest.decode_entry(e1, np.random.default_rng(0), c.model, c.data, True)
  # 10 fps file read at 5 fps: every 2nd frame, squashed 48x64 -> 32x32.
  assert b1['frames'].shape == (10, 32, 32, 3)
  np.testing.assert_allclose(b1['frames'].mean((1, 2, 3)), 16.0 * np.arange(10), atol=3)
  np.testing.assert_array_equal(b1['sync'], np.load(media / 'sync.npy'))
  assert bool(b1['has_video']) and not bool(b1['has_prompt'])
  # 1.5 s of audio: zero-padded target; a 6-frame video: frames 0, 2, 4 then the last repeated.
  assert int(b1['length']) == 24000 and not b1['audio'][24000:].any()
  b2 = manifest.decode_entry(e2, np.random.default_rng(0), c.model, c.data, True)
  np.testing.assert_allclose(b2['frames'].mean((1, 2, 3)), [0, 16, 32] + [32] * 7, atol=3)
  assert not b2['sync'].any()
  # audio_condition / uni_condition prompt: the window itself, LEFT-padded (official).
  np.testing.assert_array_equal(b2['prompt'][-24000:], b2['audio'][:24000])
  assert not b2['prompt'][:-24000].any()


def test_pth_sync_features(media, tmp_path):
  torch = optional.torch()
  feats = np.random.default_rng(1).normal(size=(1, 24, 64)).astype(np.float32)
  torch.save(torch.from_numpy(feats), tmp_path / 's.pth')
  np.testing.assert_array_equal(video_io.load_sync(str(tmp_path / 's.pth'), 24, 64), feats[0])
  with pytest.raises(audio_io.BadSampleError, match='shape'):
    video_io.load_sync(str(tmp_path / 's.pth'), 240, 768)


@pytest.mark.parametrize('name,line,match', [
    ('corrupt', lambda d: _line(d / 'corrupt.wav'), 'corrupt.wav: cannot decode'),
    ('truncated', lambda d: _line(d / 'truncated.wav'), 'truncated.wav: truncated'),
    ('no_file', lambda d: _line(d / 'nothing.wav'), 'nothing.wav: audio file does not'),
    ('no_video', lambda d: _line(d / 'short.flac', 'video_condition-audio', d / 'gone.mp4'),
     'gone.mp4: video file does not exist'),
    ('nan_sync', lambda d: _line(d / 'short.flac', 'video_condition-audio', d / 'clip.mp4',
                                 d / 'nan_sync.npy'), 'nan_sync.npy: sync features has 1 non-'),
])
def test_bad_sample_errors_name_the_file(media, name, line, match):
  c = _config()
  entry = manifest.read_manifest(_write_manifest(media / f'{name}.jsonl', [line(media)]))[0]
  with pytest.raises(audio_io.BadSampleError, match=match):
    manifest.decode_entry(entry, np.random.default_rng(0), c.model, c.data, True)


def _mixed_manifest(media):
  good = [_line(media / 'sine22k.wav', caption='one'), _line(media / 'long.wav', caption='two')]
  bad = [_line(media / 'corrupt.wav'), _line(media / 'truncated.wav'),
         _line(media / 'short.flac', 'video_condition-audio', media / 'gone.mp4'),
         _line(media / 'short.flac', 'video_condition-audio', media / 'clip.mp4',
               media / 'nan_sync.npy')]
  return _write_manifest(media / 'mixed.jsonl', [good[0]] + bad[:2] + [good[1]] + bad[2:])


def test_pipeline_skips_and_counts_bad_samples(media):
  c = _config(batch_size=2, heldout_manifest=_mixed_manifest(media))
  it = pipeline.make_iterator(c, split='heldout', process_index=0, process_count=1)
  batches = list(it)
  assert len(batches) == 3   # 6 lines / 2 rows: skipping never changes the step count
  valid = np.concatenate([b['valid'] for b in batches])
  assert valid.sum() == 2 and valid[:2].all()
  tok = build_tokenizer(c.model.text)(['one', 'two']).input_ids
  np.testing.assert_array_equal(batches[0]['input_ids'], tok)
  assert it.stats['skipped'] == 4 and 'nan_sync.npy' in it.stats['last_skipped']
  # Train: the bad lines never reach a batch, every epoch.
  c.data.manifest = c.data.heldout_manifest
  it = pipeline.make_iterator(c, process_index=0, process_count=1)
  rows = np.concatenate([b['attention_mask'].sum(1) for b in [next(it) for _ in range(4)]])
  # 8 good rows ('one'/'two' + EOS: 2 word tokens) = 4 epochs of 2; the 4 bad lines of at least 3 of them
  # were met (the 4th epoch may end with bad lines not yet read).
  assert set(rows.tolist()) == {2} and 12 <= it.stats['skipped'] <= 16


def test_skip_limit_stops_a_mostly_bad_train_stream(media):
  good = [_line(media / 'sine22k.wav'), _line(media / 'long.wav')]
  bad = [_line(media / 'corrupt.wav'), _line(media / 'truncated.wav')]
  # 2 of 5 lines (40 %) bad: stopped once 100 samples were seen, naming the files.
  c = _config(batch_size=4)
  c.data.manifest = _write_manifest(media / 'bad40.jsonl', good + bad + [good[0]])
  it = pipeline.make_iterator(c, process_index=0, process_count=1)
  with pytest.raises(pipeline.SkipLimitError, match=r'over config.data.max_skip_fraction=0.1; '
                     r'worst: .*(corrupt|truncated).wav \(\d+x\), .*(corrupt|truncated).wav'):
    for _ in range(40):
      next(it)
  assert it.stats['seen'] >= pipeline.MIN_SAMPLES_FOR_SKIP_FRACTION
  # 1 of 20 (5 %) is under the default limit; the counters survive a checkpoint round trip.
  c.data.manifest = _write_manifest(media / 'bad5.jsonl', [bad[0]] + [good[0]] * 19)
  it = pipeline.make_iterator(c, process_index=0, process_count=1)
  for _ in range(40):
    next(it)
  stats = it.stats
  assert 7 <= stats['skipped'] <= 9 and stats['seen'] == 160 + stats['skipped']
  again = pipeline.make_iterator(c, process_index=0, process_count=1)
  again.set_state(it.get_state())
  assert again.stats == stats


def test_a_thousand_bad_samples_in_a_row_stop_the_stream(media):
  """With no fraction limit (max_skip_fraction 1), a stream of only bad lines still stops, after
  MAX_CONSECUTIVE_SKIPS in a row, naming the last file."""
  c = _config(batch_size=4, max_skip_fraction=1.0)
  c.data.manifest = _write_manifest(media / 'allbad.jsonl', [_line(media / 'corrupt.wav')])
  it = pipeline.make_iterator(c, process_index=0, process_count=1)
  with pytest.raises(pipeline.SkipLimitError,
                     match=rf'^{pipeline.MAX_CONSECUTIVE_SKIPS} samples in a row failed to load; '
                     r'last: .*corrupt.wav'):
    next(it)
  assert it.stats['skipped'] == pipeline.MAX_CONSECUTIVE_SKIPS


def test_fail_fast_raises_naming_the_file(media):
  c = _config(batch_size=2, fail_fast=True, heldout_manifest=_mixed_manifest(media))
  with pytest.raises(Exception, match='corrupt.wav'):
    list(pipeline.make_iterator(c, split='heldout', process_index=0, process_count=1))


def test_folder_source_with_txt_captions(media, tmp_path):
  soundfile.write(tmp_path / 'a.wav', _sine(1.0, SR), SR)
  (tmp_path / 'a.txt').write_text('a dog barks\n')
  soundfile.write(tmp_path / 'b.flac', _sine(1.0, SR, 880.0), SR)
  c = _config(batch_size=2, heldout_manifest=str(tmp_path))
  b = next(pipeline.make_iterator(c, split='heldout', process_index=0, process_count=1))
  want = build_tokenizer(c.model.text)(['a dog barks', '']).input_ids
  np.testing.assert_array_equal(b['input_ids'], want)
  assert (b['task'] == 0).all() and b['valid'].all()


def test_manifest_errors_name_file_and_line(tmp_path):
  p = tmp_path / 'm.jsonl'
  p.write_text(json.dumps({'path': 'x.wav', 'type': 'text_condition-audio'}) + '\n' +
               json.dumps({'path': 'y.wav', 'type': 'speech_condition-audio'}) + '\n')
  with pytest.raises(ValueError, match=r'm.jsonl:2: unknown manifest type'):
    manifest.read_manifest(str(p))
  p.write_text('{"video_path": "v.mp4"}\n')
  with pytest.raises(ValueError, match=r'm.jsonl:1: .*"path"'):
    manifest.read_manifest(str(p))

"""TFDS builders (axturbo/data/tfds_builders.py) and data.source='tfds': built without
TensorFlow, read back bit-identical to the direct embedded / manifest / folder pipelines, bad
files counted in the dataset's metadata."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from axturbo.data import audio_io
from axturbo.data import manifest
from axturbo.data import pipeline
from axturbo.data import tfds_builders
from configs import tiny
from tests import media_files
from tests import script_runs

SR = 16000
ANNOTATIONS = {'category': {'dog': 2, 'bell': 1}, 'SED': [['dog', 0.1, 0.4], ['bell', 0.5, 0.9],
                                                       ['dog', 1.0, 1.2]],
               'time_relation': ['dog', 'bell', 'dog'], 'caption_style': 'order'}


def _config(**data):
  c = tiny.get_config()
  c.data.update(read_threads=1, read_buffer=4, **data)
  return c


def _tfds(c, name, data_dir):
  """`c` reading dataset `name` instead of its own source."""
  r = c.copy_and_resolve_references()
  r.data.update(source='tfds', tfds_name=name, tfds_data_dir=str(data_dir))
  return r


def _batches(c, split='train', n=3, process_index=1, process_count=2):
  it = pipeline.make_iterator(c, split=split, process_index=process_index,
                              process_count=process_count)
  return [next(it) for _ in range(n)] if split == 'train' else list(it)


def _assert_same(a, b):
  assert len(a) == len(b) and a
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _build(c, name, data_dir, **options):
  return tfds_builders.build(c, name, str(data_dir), **options)


def test_no_tensorflow_here():
  """The builders and the reader are tested where TensorFlow is not installed, so every build
  and read in this file proves that they need none."""
  assert importlib.util.find_spec('tensorflow') is None


@pytest.fixture(scope='module')
def events(tmp_path_factory):
  """32 embedded train clips and 8 heldout ones."""
  c = _config(num_clips=32, heldout_clips=8, batch_size=8)
  data_dir = tmp_path_factory.mktemp('tfds')
  return c, data_dir, _build(c, 'tiny', data_dir)


def test_events_dataset_replays_the_embedded_pipeline(events):
  c, data_dir, builder = events
  r = _tfds(c, 'axturbo_events/tiny', data_dir)
  # 3 batches of 8 cross the 32-clip epoch boundary (reshuffle); host 1 of 2.
  _assert_same(_batches(r), _batches(c))
  _assert_same(_batches(r, 'heldout', process_index=0, process_count=1),
               _batches(c, 'heldout', process_index=0, process_count=1))
  assert builder.info.metadata['skipped'] == {'train': 0, 'heldout': 0}
  assert 'tensorflow' not in sys.modules


def test_splits_over_the_writers_memory_buffer_need_no_tensorflow(events, tmp_path, monkeypatch):
  """TFDS spills a split larger than its buffer (1 GiB) to bucket files, through TensorFlow's
  gfile unless the builder gives it another; a 2 kB buffer spills these 40 clips."""
  from tensorflow_datasets.core import shuffle
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 2048)
  c, data_dir, _ = events
  _build(c, 'tiny', tmp_path)
  spilled, kept = (_tfds(c, 'axturbo_events/tiny', d) for d in (tmp_path, data_dir))
  _assert_same(_batches(spilled, n=5), _batches(kept, n=5))
  _assert_same(_batches(spilled, 'heldout', process_index=0, process_count=1),
               _batches(kept, 'heldout', process_index=0, process_count=1))
  assert 'tensorflow' not in sys.modules


def test_events_dataset_reads_with_plain_tfds_and_keeps_annotations(events):
  import tensorflow_datasets as tfds
  c, data_dir, _ = events
  source = tfds.data_source('axturbo_events/tiny', split='heldout', data_dir=str(data_dir))
  clip = pipeline.EmbeddedSource('heldout', 8, c.model, 2.0).clips[5]
  ex = source[5]
  assert ex['caption'].decode() == clip['caption']
  assert ex['caption_style'].decode() == clip['caption_style']
  ann = clip['annotations']
  assert [n.decode() for n in ex['time_relation']] == ann['time_relation']
  assert dict(zip([n.decode() for n in ex['category']['name']],
                  ex['category']['count'])) == ann['category']
  np.testing.assert_allclose(ex['sed']['start_s'], [s for _, s, _ in ann['SED']])


def test_other_shapes_settings_and_missing_datasets_are_refused(events):
  c, data_dir, _ = events
  r = _tfds(c, 'axturbo_events/tiny', data_dir)
  r.model.audio_samples = 16384
  with pytest.raises(ValueError, match="feature 'audio'"):
    pipeline.make_iterator(r, process_index=0, process_count=1)
  r = _tfds(c, 'axturbo_events/tiny', data_dir)
  r.model.sample_rate = 22050
  with pytest.raises(ValueError, match='sample_rate=16000'):
    pipeline.make_iterator(r, process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match='data.prepare'):
    pipeline.make_iterator(_tfds(c, 'axturbo_events/other', data_dir), process_index=0,
                           process_count=1)
  # The same name asked for from other settings: refused, not silently reused.
  with pytest.raises(ValueError, match=r"'num_clips': \(32, 16\)"):
    _build(_config(num_clips=16, heldout_clips=8), 'tiny', data_dir)
  count_only = dict(category=0.0, count=1.0, order=0.0, timestamp=0.0)
  with pytest.raises(ValueError, match=r"'caption_probs': \(\(.*\), \(0.0, 1.0, 0.0, 0.0\)\)"):
    _build(_config(num_clips=32, heldout_clips=8, caption_styles=count_only), 'tiny', data_dir)


def test_events_dataset_keeps_the_training_caption_mix(tmp_path):
  c = _config(num_clips=8, heldout_clips=4, batch_size=4,
              caption_styles=dict(category=0.0, count=1.0, order=0.0, timestamp=0.0),
              exclude_categories=('hiss', 'tone'), require_categories=('bell',),
              require_share=0.5)
  builder = _build(c, 'counts', tmp_path)
  settings = builder.info.metadata['settings']
  assert tuple(settings['caption_probs']) == (0.0, 1.0, 0.0, 0.0)
  assert tuple(settings['exclude_categories']) == ('hiss', 'tone')
  assert tuple(settings['require_categories']) == ('bell',) and settings['require_share'] == 0.5
  r = _tfds(c, 'axturbo_events/counts', tmp_path)
  _assert_same(_batches(r, n=2, process_index=0, process_count=1),
               _batches(c, n=2, process_index=0, process_count=1))
  _assert_same(_batches(r, 'heldout', process_index=0, process_count=1),
               _batches(c, 'heldout', process_index=0, process_count=1))
  # Rebuilding from the same settings reuses it (the JSON list reads as the tuple).
  _build(c, 'counts', tmp_path)


@pytest.fixture(scope='module')
def media(tmp_path_factory):
  d = tmp_path_factory.mktemp('media')
  media_files.write_wav(d / 'a22k.wav', media_files.tone(1.5, 22050), 22050)
  soundfile.write(d / 'b.mp3', media_files.tone(1.0, SR, 330.0, channels=1), SR, format='MP3')
  media_files.write_wav(d / 'c.wav', media_files.tone(2.0, SR, 550.0), SR)
  media_files.write_mp4(d / 'c.mp4', num_frames=25, fps=10)
  np.save(d / 'c_sync.npy', np.random.default_rng(0).normal(size=(24, 64)).astype(np.float32))
  (d / 'corrupt.wav').write_bytes(b'RIFF' + bytes(range(256)) * 4)
  whole = (d / 'c.wav').read_bytes()
  (d / 'truncated.wav').write_bytes(whole[:len(whole) // 3])
  return d


def _line(path, kind='text_condition-audio', video='', sync='', caption='a dog barks', **extra):
  return {'path': str(path), 'video_path': str(video), 'sync_feature': str(sync),
          'caption': {'audio_caption': {'0-10': caption}}, 'type': kind, **extra}


def _manifest(path, lines):
  path.write_text(''.join(json.dumps(x) + '\n' for x in lines))
  return str(path)


def test_manifest_dataset_replays_the_manifest_pipeline(media, tmp_path):
  d = media
  path = _manifest(tmp_path / 'm.jsonl', [
      _line(d / 'a22k.wav', **ANNOTATIONS),
      _line(d / 'b.mp3', 'text_condition-music', caption='a bell rings'),
      _line(d / 'c.wav', 'video_condition-audio', d / 'c.mp4', d / 'c_sync.npy'),
      _line(d / 'c.wav', 'uni_condition-audio', d / 'c.mp4', caption='a dog and a bell')])
  c = _config(source='manifest', manifest=path, heldout_manifest=path, batch_size=4)
  builder = _build(c, 'small', tmp_path / 'tfds')
  assert builder.name == 'axturbo_manifest'
  r = _tfds(c, 'axturbo_manifest/small', tmp_path / 'tfds')
  _assert_same(_batches(r), _batches(c))
  _assert_same(_batches(r, 'heldout'), _batches(c, 'heldout'))
  import tensorflow_datasets as tfds
  first = tfds.data_source('axturbo_manifest/small', split='train',
                           data_dir=str(tmp_path / 'tfds'))[0]
  assert first['caption_style'] == b'order' and list(first['category']['count']) == [2, 1]
  np.testing.assert_allclose(first['sed']['end_s'], [0.4, 0.9, 1.2])


def test_folder_dataset_replays_the_folder_pipeline(media, tmp_path):
  folder = tmp_path / 'clips'
  folder.mkdir()
  for name in ('a22k.wav', 'c.wav'):
    (folder / name).write_bytes((media / name).read_bytes())
  (folder / 'c.txt').write_text('a bell rings\n')
  c = _config(source='manifest', manifest=str(folder), heldout_manifest=str(folder),
              batch_size=2)
  assert _build(c, 'clips', tmp_path / 'tfds').name == 'axturbo_folder'
  r = _tfds(c, 'axturbo_folder/clips', tmp_path / 'tfds')
  _assert_same(_batches(r), _batches(c))
  _assert_same(_batches(r, 'heldout'), _batches(c, 'heldout'))


def test_bad_files_are_skipped_and_counted_in_the_dataset_info(media, tmp_path):
  d = media
  bad = [_line(d / 'corrupt.wav'), _line(d / 'truncated.wav'), _line(d / 'gone.wav'),
         _line(d / 'c.wav', 'video_condition-audio', d / 'gone.mp4')]
  path = _manifest(tmp_path / 'bad.jsonl', [_line(d / 'c.wav'), *bad, _line(d / 'a22k.wav')])
  c = _config(source='manifest', manifest=path)
  # The messages the direct pipeline gives for the same lines.
  want = []
  for entry in manifest.read_manifest(path)[1:5]:
    with pytest.raises(audio_io.BadSampleError) as e:
      manifest.decode_entry(entry, np.random.default_rng(0), c.model, c.data, False)
    want.append(str(e.value))
  builder = _build(c, 'bad', tmp_path / 'tfds', workers=2)   # decoded in 2 processes
  assert builder.info.splits['train'].num_examples == 2
  assert builder.info.metadata['skipped'] == {'train': 4}
  assert builder.info.metadata['skipped_messages'] == {'train': want}
  with pytest.raises(audio_io.BadSampleError, match='corrupt.wav'):
    _build(c, 'bad_fail_fast', tmp_path / 'tfds', fail_fast=True)
  # A dataset built before the sync_checkpoint setting existed is still reused (as '').
  [meta] = (tmp_path / 'tfds').glob('axturbo_manifest/bad/*/metadata.json')
  info = json.loads(meta.read_text())
  del info['settings']['sync_checkpoint']
  meta.write_text(json.dumps(info))
  assert _build(c, 'bad', tmp_path / 'tfds').info.splits['train'].num_examples == 2


@pytest.mark.e2e
def test_prepare_command_line(tmp_path):
  """`python -m data.prepare` builds config.data.tfds_name and says how to train on it."""
  r = subprocess.run(
      [sys.executable, '-m', 'data.prepare', '--config=configs/tiny.py',
       '--config.data.num_clips=4', '--config.data.heldout_clips=2', f'--data_dir={tmp_path}'],
      cwd=script_runs.REPO, env=script_runs.env(tmp_path), capture_output=True, text=True,
      timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'axturbo_events/tiny: 4 train, 2 heldout examples (0 files skipped)' in r.stdout
  assert f'--config.data.tfds_name=axturbo_events/tiny --config.data.tfds_data_dir={tmp_path}' \
      in r.stdout
  assert 'axturbo_events/tiny train: 100%' in r.stderr   # the progress bar


def test_a_manifest_of_only_bad_files_is_one_line(media, tmp_path):
  """No example to write: one ValueError naming the manifest and the first file, not TFDS's
  'No examples were yielded' AssertionError."""
  path = _manifest(tmp_path / 'bad.jsonl', [_line(media / 'corrupt.wav'),
                                            _line(media / 'gone.wav')])
  c = _config(source='manifest', manifest=path)
  with pytest.raises(ValueError) as e:
    _build(c, 'allbad', tmp_path / 'tfds')
  assert str(e.value).startswith(f'manifest {path}: none of its 2 file(s) could be read, nothing '
                                 f'to build for the train split (first: {media / "corrupt.wav"}')
  assert not list((tmp_path / 'tfds').glob('axturbo_manifest/allbad/*/*.json'))


@pytest.mark.e2e
def test_prepare_command_line_errors_are_one_line(media, tmp_path):
  """A bad --config.data.* override and a manifest of only bad files: one line each, no
  traceback."""
  def prepare(*args):
    r = subprocess.run([sys.executable, '-m', 'data.prepare', '--config=configs/tiny.py',
                        f'--data_dir={tmp_path / "tfds"}', *args], cwd=script_runs.REPO,
                       env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    return r.stderr.strip().splitlines()
  lines = prepare('--config.data.nosuch=1')
  assert len(lines) == 1 and lines[0].endswith(
      "prepare.py: unknown config key 'data.nosuch' (in '--config.data.nosuch=1'): the config "
      "has no field 'nosuch' there; see the config file for the fields"), lines
  lines = prepare('--config.data.batch_size=two')
  assert lines[0].endswith("prepare.py: flag --config.data.batch_size=two: invalid literal for "
                           "int() with base 10: 'two'"), lines
  assert lines[1:] == ['Try --helpfull for the list of flags.']
  path = _manifest(tmp_path / 'bad.jsonl', [_line(media / 'corrupt.wav')])
  lines = prepare('--config.data.source=manifest', f'--config.data.manifest={path}',
                  '--config.data.tfds_name=axturbo_manifest/allbad')
  assert lines[-1].startswith(f'error: manifest {path}: none of its 1 file(s) could be read'), (
      lines)
  assert not [l for l in lines if 'AssertionError' in l or 'No examples' in l], lines


def test_sync_batches_keep_order_and_hold_back_little():
  """The builder's batching of examples for the Synchformer: in order, cut after `size` videos
  or `max_items` examples; one example a batch when there is no extractor (size 0)."""
  batches = tfds_builders._batches  # pylint: disable=protected-access
  assert list(batches(range(3), lambda x: True, 0)) == [[0], [1], [2]]
  assert list(batches(range(7), lambda x: x % 2 == 1, 2)) == [[0, 1, 2, 3], [4, 5, 6]]
  assert [len(b) for b in batches(range(150), lambda x: False, 8)] == [64, 64, 22]

"""Input pipeline on the embedded source: shapes, tasks, determinism, restore, sharding (the
TFDS source: tests/test_tfds_data.py)."""
import hashlib

import numpy as np
import pytest

from axturbo.data import embedded
from axturbo.data import tokenizers
from axturbo.data import pipeline
from axturbo.data import tasks
from configs import tiny


def _config(**data):
  c = tiny.get_config()
  c.data.update(num_clips=16, heldout_clips=10, read_threads=1, read_buffer=4, **data)
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
             for a, b in zip(a, b))


def _clip_id(audio):
  """Identity of a clip across phase flips (the pipeline may negate the waveform)."""
  return hashlib.sha1(np.abs(audio).tobytes()).hexdigest()


def test_batch_shapes_dtypes_and_ranges():
  c = _config()
  m = c.model
  n = c.data.batch_size
  b = next(pipeline.make_iterator(c, process_index=0, process_count=1))
  want = {
      'audio': ((n, m.audio_samples, 2), np.float32),
      'prompt': ((n, m.prompt_samples, 2), np.float32),
      'input_ids': ((n, m.text.max_length), np.int32),
      'attention_mask': ((n, m.text.max_length), np.int32),
      'frames': ((n, m.video.num_frames, m.clip.image_size, m.clip.image_size, 3), np.uint8),
      'sync': ((n, m.video.sync_len, m.video.sync_dim), np.float32),
      'task': ((n,), np.int32), 'valid': ((n,), np.bool_),
  }
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == want
  assert np.abs(b['audio']).max() <= 1.0 and np.abs(b['audio']).max() > 0.05
  assert b['valid'].all() and set(b['task']) <= set(range(len(tasks.TASKS)))
  # Embedded clips are 2.0 s in 2.048 s: the tail is zero padding (10 s in 11 s officially).
  assert pipeline.embedded_duration(m, c.data) == 2.0
  assert not b['audio'][:, 32000:].any()


@pytest.mark.parametrize('task', tasks.TASKS)
def test_each_task_keeps_exactly_its_modalities(task):
  c = _config()
  c.data.task_probs = {t: float(t == task) for t in tasks.TASKS}
  b = next(pipeline.make_iterator(c, process_index=0, process_count=1))
  tid = tasks.TASK_IDS[task]
  assert (b['task'] == tid).all()
  has_video = b['frames'].reshape(8, -1).any(1)
  has_prompt = b['prompt'].reshape(8, -1).any(1)
  text_len = b['attention_mask'].sum(1)
  assert (has_video == (tid in (1, 2, 6))).all()
  # A prompt task's prompt can be silent when the kept audio is (embedded silence is exact 0).
  assert has_prompt.any() if tid in (3, 4, 5, 6) else not has_prompt.any()
  assert ((text_len == 1) == (tid == 1)).all()   # '' tokenizes to EOS alone
  assert not b['sync'].any()                     # embedded clips have no sync features
  p_len = b['prompt'].shape[1]
  for audio, prompt in zip(b['audio'], b['prompt']):
    if tid == 3:   # inpaint: time-aligned copy with one zeroed span of <= 50 %
      diff = np.flatnonzero(np.any(prompt != audio, axis=1))
      assert not prompt[diff].any()
      assert diff.size == 0 or diff[-1] - diff[0] + 1 <= 0.5 * 32000
    if tid == 4 and prompt.any():   # continuation: target prefix, left-padded with zeros
      lead = (np.flatnonzero(prompt.any(1))[0] - np.flatnonzero(audio.any(1))[0])
      keep = p_len - lead
      assert 0.25 * 32000 - 1 <= keep <= 0.75 * 32000
      assert not prompt[:lead].any()
      np.testing.assert_array_equal(prompt[lead:], audio[:keep])
    if tid in (5, 6):
      np.testing.assert_array_equal(prompt, audio)


def test_captions_are_tokenized_with_the_config_tokenizer():
  c = _config()
  c.data.task_probs = {t: float(t == 'text_to_audio') for t in tasks.TASKS}
  src, _ = pipeline.base_source(c, 'train')
  b = next(pipeline.make_iterator(c, process_index=0, process_count=1, seed=3))
  tok = tokenizers.build_tokenizer(c.model.text)
  assert isinstance(tok, tokenizers.WordTokenizer)
  all_ids = {tok(src[i]['caption']).input_ids[0].tobytes() for i in range(16)}
  assert {ids.tobytes() for ids in b['input_ids']} <= all_ids


def test_caption_styles_weight_training_captions_only():
  c = _config()
  c.data.task_probs = {t: float(t == 'text_to_audio') for t in tasks.TASKS}
  c.data.caption_styles = dict(category=0.0, count=1.0, order=0.0, timestamp=0.0)
  tok = tokenizers.build_tokenizer(c.model.text)
  clips = embedded.EmbeddedDataset('train', 16, 16000, 2.0)
  count_ids = {tok(x['captions']['count']).input_ids[0].tobytes() for x in clips}
  b = next(pipeline.make_iterator(c, process_index=0, process_count=1, seed=3))
  assert {ids.tobytes() for ids in b['input_ids']} <= count_ids
  train, _ = pipeline.base_source(c, 'train')
  held, _ = pipeline.base_source(c, 'heldout')
  assert {train.clips[i]['caption_style'] for i in range(16)} == {'count'}
  # Held-out clips keep the uniform mix they are scored on.
  uniform = embedded.EmbeddedDataset('heldout', 10, 16000, 2.0)
  assert [held.clips[i]['caption'] for i in range(10)] == [x['caption'] for x in uniform]
  assert len({held.clips[i]['caption_style'] for i in range(10)}) > 1


def test_category_filter_applies_to_training_clips_only():
  c = _config(exclude_categories=('hiss',))
  c.data.heldout_clips = 64
  train, _ = pipeline.base_source(c, 'train')
  held, _ = pipeline.base_source(c, 'heldout')
  assert not any('hiss' in train.clips[i]['annotations']['category'] for i in range(16))
  # Held-out clips keep every category (the ones a fine-tune is scored on among them).
  uniform = embedded.EmbeddedDataset('heldout', 64, 16000, 2.0)
  assert [held.clips[i]['caption'] for i in range(64)] == [x['caption'] for x in uniform]
  assert any('hiss' in x['annotations']['category'] for x in uniform)
  c = _config(source='manifest', manifest='m.jsonl', require_categories=('bell',))
  with pytest.raises(ValueError, match="require_categories pick the embedded source's clips"):
    pipeline.check_data_config(c.data)


def test_restore_replays_bit_identical_batches():
  c = _config()
  it = pipeline.make_iterator(c, process_index=0, process_count=1)
  _take(it, 3)
  state = it.get_state()
  after = _take(it, 3)   # crosses the 16-clip epoch boundary (reshuffle)
  fresh = pipeline.make_iterator(c, process_index=0, process_count=1)
  fresh.set_state(state)
  assert _same(_take(fresh, 3), after)
  assert fresh.stats['batches'] == 6


def test_seed_determines_order():
  c = _config()
  a = _take(pipeline.make_iterator(c, process_index=0, process_count=1, seed=1), 2)
  b = _take(pipeline.make_iterator(c, process_index=0, process_count=1, seed=1), 2)
  d = _take(pipeline.make_iterator(c, process_index=0, process_count=1, seed=2), 2)
  assert _same(a, b)
  assert not _same(a, d)


def test_global_batches_do_not_depend_on_the_host_count():
  """Host p of P gets rows [p*b, (p+1)*b) of the one global stream's batches, so a run resumed
  on another number of hosts trains on the same global batches (augmentations included)."""
  c = _config()
  single = _take(pipeline.make_iterator(c, process_index=0, process_count=1), 3)
  hosts = [_take(pipeline.make_iterator(c, process_index=p, process_count=2), 3)
           for p in range(2)]
  assert hosts[0][0]['audio'].shape[0] == c.data.batch_size // 2
  joined = [{k: np.concatenate([hosts[0][j][k], hosts[1][j][k]]) for k in single[j]}
            for j in range(3)]
  assert _same(joined, single)
  # Two batches = one epoch of the 16 clips: every clip once.
  assert len({_clip_id(a) for b in single[:2] for a in b['audio']}) == 16


def test_heldout_tail_is_padded_and_hosts_agree_on_length():
  c = _config(batch_size=6)
  valid, per_host = [], []
  for host in range(3):   # 10 heldout clips over 3 hosts: shards of 4, 3, 3; 2 rows per host
    batches = list(pipeline.make_iterator(c, split='heldout', process_index=host,
                                          process_count=3))
    per_host.append(len(batches))
    for b in batches:
      valid.append(b['valid'])
      assert not b['audio'][~b['valid']].any() and not b['input_ids'][~b['valid']].any()
  assert per_host == [2, 2, 2]
  assert np.concatenate(valid).sum() == 10


def test_config_errors_name_the_key():
  c = _config()
  c.data.source = 'webdataset'
  with pytest.raises(ValueError, match='config.data.source'):
    pipeline.make_iterator(c, process_index=0, process_count=1)
  c = _config()
  c.data.bogus = 1
  with pytest.raises(ValueError, match='bogus'):
    pipeline.make_iterator(c, process_index=0, process_count=1)
  c = _config(source='manifest')
  with pytest.raises(ValueError, match='config.data.manifest'):
    pipeline.make_iterator(c, process_index=0, process_count=1)
  c = _config()
  c.data.task_probs = {'speech': 1.0}
  with pytest.raises(ValueError, match='speech'):
    pipeline.make_iterator(c, process_index=0, process_count=1)
  c = _config()
  c.data.caption_styles.count = -1.0
  with pytest.raises(ValueError, match='data.caption_styles'):
    pipeline.make_iterator(c, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='divisible'):
    pipeline.make_iterator(_config(), process_index=0, process_count=3)

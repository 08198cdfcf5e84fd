"""A synthetic, learnable stand-in with the interface of `axturbo.data.pipeline.make_iterator`.

For benchmarks and smoke runs (`train.data_source = 'synthetic'`): clip i of the global stream
is a stereo tone whose frequency class (0..9) also sets the caption bytes and the frame colour,
all drawn from (seed, i). Host p of P gets rows [p*b, (p+1)*b) of every global batch of
B = P*b rows, so any number of hosts sees the same global batches in the same order.
"""
import grain
import ml_collections as mlc
import numpy as np

from axturbo.data import tokenizers

_NUM_CLASSES = 10


def _sample(m: mlc.ConfigDict, seed: int, index: int) -> dict:
  rng = np.random.default_rng([seed, index])
  c = int(rng.integers(_NUM_CLASSES))
  n, sr = m.audio_samples, m.sample_rate
  freq = 110.0 * 2 ** (c / 2)  # 110 Hz .. ~2.5 kHz
  phase = rng.uniform(0, 2 * np.pi)
  tone = 0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr + phase)
  audio = np.stack([tone, tone * rng.uniform(0.5, 1.0)], -1).astype(np.float32)
  tokens = tokenizers.offline_tokenizer(m.text)(f'a tone of class {c}')
  s = m.clip.image_size
  frames = np.full((m.video.num_frames, s, s, 3), 25 * c, np.uint8)
  return {
      'audio': audio,
      'input_ids': tokens.input_ids[0],
      'attention_mask': tokens.attention_mask[0],
      'frames': frames,
      'sync': rng.standard_normal((m.video.sync_len, m.video.sync_dim)).astype(np.float32),
      'prompt': np.zeros((m.prompt_samples, 2), np.float32),
      'task': np.int32(0),
      'valid': np.bool_(True),
  }


def make_iterator(config: mlc.ConfigDict, split: str = 'train', process_index: int = 0,
                  process_count: int = 1, seed: int | None = None):
  """grain DatasetIterator of per-host dict batches (get_state / set_state for checkpoints)."""
  global_batch = config.data.batch_size
  if global_batch % process_count:
    raise ValueError(f'data.batch_size={global_batch} is not divisible by {process_count} hosts')
  b = global_batch // process_count
  seed = (config.data.seed if seed is None else seed) + (0 if split == 'train' else 1_000_003)
  m = config.model

  def host_rows(indices):
    rows = [_sample(m, seed, int(i)) for i in indices[process_index * b:(process_index + 1) * b]]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  ds = grain.MapDataset.range(1 << 40).batch(global_batch).map(host_rows)
  return ds.to_iter_dataset().__iter__()

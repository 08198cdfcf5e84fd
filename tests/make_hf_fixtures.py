"""Writes tests/fixtures/hf_{t5_tiny,t5_gated_tiny,clip_tiny}.npz from Hugging Face PyTorch models.

Needs only torch and transformers (no official AudioX code). Tiny random configs; every
parameter is re-drawn (norm scales around 1, biases and embeddings non-zero) so no path is
trivially an identity. 'sd/' holds exactly the tensors `save_pretrained` writes to
model.safetensors; meta['hf_config'] is the config.json content. Run from the repo root:
  python tests/make_hf_fixtures.py
"""
import math
import tempfile

import numpy as np
from safetensors.numpy import load_file

from tests.fixture_io import FIXTURES, save_fixture


# torch and transformers are imported where used: the fixture list (HF_FIXTURES) is read by
# tests/test_fixtures_readme.py in the Python 3.12 environment, which has no torch.


def _randomize(model, seed: int) -> None:
  """Re-draws every parameter of a torch module in place."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if 'norm' in name and name.endswith('weight'):
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith('bias') and p.ndim == 1:
        p.copy_(0.2 * noise)
      elif 'embed' in name or 'relative_attention_bias' in name:
        p.copy_(noise)
      else:
        p.copy_(noise / math.sqrt(p[0].numel()))


def _saved_state(model) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp, safe_serialization=True)
    return dict(load_file(f'{tmp}/model.safetensors'))


def _versions() -> dict:
  import torch
  import transformers
  return {'torch': torch.__version__, 'transformers': transformers.__version__}


def make_t5(name: str, feed_forward_proj: str, seed: int, folder=FIXTURES) -> None:
  import torch
  import transformers
  cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=6, d_ff=48, num_layers=2,
                              num_heads=4, relative_attention_num_buckets=16,
                              relative_attention_max_distance=20, dropout_rate=0.0,
                              feed_forward_proj=feed_forward_proj, layer_norm_epsilon=1e-6)
  model = transformers.T5EncoderModel(cfg).eval()
  _randomize(model, seed)
  rng = np.random.default_rng(seed)
  length = 24
  ids = np.zeros((3, length), np.int64)
  ids[0] = rng.integers(2, 64, length)
  ids[0, -1] = 1                                 # full row ending in </s>
  ids[1, :8] = rng.integers(2, 64, 8)
  ids[1, 8] = 1                                  # 9 tokens, then padding
  ids[2, 0] = 1                                  # empty prompt: just </s>
  mask = (np.arange(length)[None] <= np.argmax(ids == 1, axis=1)[:, None]).astype(np.int64)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  rel = torch.arange(-600, 601)
  buckets = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      rel, bidirectional=True, num_buckets=32, max_distance=128)
  meta = {'hf_config': cfg.to_dict(), 'versions': _versions(),
          'made_by': f'tests/make_hf_fixtures.py: T5EncoderModel, random weights, seed {seed}',
          'buckets_32_128': 'HF T5 buckets of offsets -600..600 (bidirectional, 32, 128)'}
  save_fixture(name, _saved_state(model),
               {'input_ids': ids.astype(np.int32), 'attention_mask': mask.astype(np.int32)},
               {'last_hidden_state': out.last_hidden_state.numpy(),
                'buckets_32_128': buckets.numpy().astype(np.int32)}, meta, folder)


def make_clip(name: str, seed: int, folder=FIXTURES) -> None:
  import torch
  import transformers
  cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, image_size=32, patch_size=8,
                                      projection_dim=16, hidden_act='quick_gelu',
                                      layer_norm_eps=1e-5, attn_implementation='eager')
  model = transformers.CLIPVisionModelWithProjection(cfg).eval()
  _randomize(model, seed)
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
  mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
  std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
  pixels = (torch.tensor(frames, dtype=torch.float32) / 255.0 - mean) / std
  with torch.no_grad():
    out = model.vision_model(pixel_values=pixels)
  meta = {'hf_config': cfg.to_dict(), 'versions': _versions(),
          'made_by': f'tests/make_hf_fixtures.py: CLIPVisionModelWithProjection (eager '
                     f'attention), random weights, seed {seed}; pixels = (frames/255-mean)/std'}
  save_fixture(name, _saved_state(model), {'frames': frames},
               {'pixels': pixels.numpy(), 'last_hidden_state': out.last_hidden_state.numpy()},
               meta, folder)


# name -> (function, args): what __main__ writes and what make_official --check regenerates.
HF_FIXTURES = {
    'hf_t5_tiny': (make_t5, ('hf_t5_tiny', 'relu', 0)),
    'hf_t5_gated_tiny': (make_t5, ('hf_t5_gated_tiny', 'gated-gelu', 1)),
    'hf_clip_tiny': (make_clip, ('hf_clip_tiny', 2)),
}


if __name__ == '__main__':
  for fn, args in HF_FIXTURES.values():
    fn(*args)

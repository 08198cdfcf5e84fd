"""Parity of `T5Encoder` with Hugging Face `T5EncoderModel`, loaded through a local HF folder.

Fixtures tests/fixtures/hf_t5_tiny.npz and hf_t5_gated_tiny.npz were made by
tests/make_hf_fixtures.py (torch 2.13.0+cpu, transformers 4.46.3): `T5EncoderModel` at
vocab 64, d_model 32, d_kv 6, d_ff 48, 2 layers, 4 heads (inner 24 != d_model),
16 buckets, max distance 20, eps 1e-6, feed_forward_proj 'relu' (seed 0) and 'gated-gelu'
(seed 1); every parameter re-drawn at random (norm scales 1 + 0.2 N(0, 1), embeddings and the
relative bias N(0, 1), matrices N(0, 1/fan_in)). 'sd/' is what `save_pretrained` writes.
Inputs, L = 24 (longer than max distance, so exact, log and clamped buckets are used):
a full row, a 9-token row with padding, and an empty prompt (only </s>, id 1).
The fixture also holds HF's bucket ids for offsets -600..600 at t5-base's (32, 128).
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.hf import (load_t5_from_dir, read_hf_config, t5_encoder_params,
                                t5_fields)
from axturbo.models.t5 import T5Conditioner, T5Encoder, relative_position_buckets
from tests.fixture_io import load_fixture, rel_err, write_hf_folder

FIXTURES = ('hf_t5_tiny', 'hf_t5_gated_tiny')


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(x.shape), tree)


@pytest.mark.parametrize('name', FIXTURES)
@pytest.mark.parametrize('scan', [False, True])
def test_parity_through_local_folder(tmp_path, name, scan):
  sd, inputs, outputs, meta = load_fixture(name)
  folder = write_hf_folder(tmp_path / 'model', sd, meta['hf_config'])
  module, params = load_t5_from_dir(folder, scan_layers=scan)
  ids, mask = jnp.asarray(inputs['input_ids']), jnp.asarray(inputs['attention_mask'])

  expected = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), ids, mask)))
  assert jax.tree.structure(params) == jax.tree.structure(expected['params'])
  assert _shapes(params) == _shapes(expected['params'])

  out = np.asarray(jax.jit(module.apply)({'params': params}, ids, mask))
  err = rel_err(out, outputs['last_hidden_state'])
  assert err <= 1e-5, f'{name}: rel_err {err}'
  # The raw encoder keeps (non-zero) values at padded positions, as HF does.
  assert np.abs(out[2, 1:]).max() > 0


def test_conditioner_zeroes_padding(tmp_path):
  sd, inputs, outputs, meta = load_fixture('hf_t5_tiny')
  folder = write_hf_folder(tmp_path / 'model', sd, meta['hf_config'])
  _, params = load_t5_from_dir(folder)
  cond = T5Conditioner(**t5_fields(read_hf_config(folder)))
  ids, mask = inputs['input_ids'], inputs['attention_mask']
  tokens, out_mask = cond.apply({'params': params}, jnp.asarray(ids), jnp.asarray(mask))
  want = outputs['last_hidden_state'] * mask[..., None]
  assert tokens.dtype == jnp.float32 and out_mask.dtype == jnp.bool_
  assert rel_err(tokens, want) <= 1e-5
  assert np.all(np.asarray(tokens)[mask == 0] == 0.0)
  # Empty prompt: one non-zero row (</s>), the rest exactly zero.
  assert np.abs(np.asarray(tokens)[2, 0]).max() > 0 and int(mask[2].sum()) == 1


def test_buckets_match_hf_at_t5_base_sizes():
  _, _, outputs, _ = load_fixture('hf_t5_tiny')
  hf = outputs['buckets_32_128']  # offsets -600..600
  ours = relative_position_buckets(601, 601, 32, 128)
  np.testing.assert_array_equal(ours[600], hf[:601])   # query 600: offsets -600..0
  np.testing.assert_array_equal(ours[0], hf[600:])     # query 0: offsets 0..600


def test_encoder_level_keys_and_full_model_file(tmp_path):
  sd, inputs, outputs, meta = load_fixture('hf_t5_tiny')
  module = T5Encoder(**t5_fields(meta['hf_config']))
  # Scoped at the encoder: 'embed_tokens.weight', 'block.*', 'final_layer_norm.weight'.
  enc = {k[len('encoder.'):]: v for k, v in sd.items() if k.startswith('encoder.')}
  enc['embed_tokens.weight'] = sd['shared.weight']
  view = StateDict(enc, 'encoder-level')
  params = t5_encoder_params(view, meta['hf_config'])
  assert view.untaken() == []
  out = module.apply({'params': params}, jnp.asarray(inputs['input_ids']),
                     jnp.asarray(inputs['attention_mask']))
  assert rel_err(out, outputs['last_hidden_state']) <= 1e-5
  # A seq2seq file (tied embedding copy, decoder and lm_head) loads; decoder is ignored.
  full = dict(sd, **{'encoder.embed_tokens.weight': sd['shared.weight'],
                     'decoder.final_layer_norm.weight': np.ones(32, np.float32),
                     'lm_head.weight': sd['shared.weight']})
  load_t5_from_dir(write_hf_folder(tmp_path / 'full', full, meta['hf_config']))
  # An unknown tensor is rejected by name.
  bad = dict(sd, **{'encoder.extra.weight': np.ones(3, np.float32)})
  with pytest.raises(ConversionError, match='encoder.extra.weight'):
    load_t5_from_dir(write_hf_folder(tmp_path / 'bad', bad, meta['hf_config']))


def test_misshaped_tensor_names_the_key(tmp_path):
  sd, _, _, meta = load_fixture('hf_t5_tiny')
  key = 'encoder.block.1.layer.1.DenseReluDense.wo.weight'
  sd[key] = sd[key][:, :-1]
  with pytest.raises(ConversionError, match=key.replace('.', r'\.')):
    load_t5_from_dir(write_hf_folder(tmp_path / 'model', sd, meta['hf_config']))


def test_missing_folder_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope'):
    load_t5_from_dir(tmp_path / 'nope')


def test_bad_inputs():
  module = T5Encoder(vocab_size=10, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2)
  ids = jnp.zeros((2, 5), jnp.int32)
  with pytest.raises(ValueError, match='attention_mask'):
    module.init(jax.random.key(0), ids, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match='input_ids'):
    module.init(jax.random.key(0), ids[0], jnp.ones((5,)))
  with pytest.raises(ValueError, match='feed_forward_proj'):
    T5Encoder(feed_forward_proj='relu-gated', num_layers=1).init(
        jax.random.key(0), ids, jnp.ones((2, 5)))


def test_t5_base_param_count():
  """t5-base encoder: 109,628,544 parameters (embedding counted once, as HF does)."""
  module = T5Encoder(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                     num_heads=12, relative_attention_num_buckets=32,
                     relative_attention_max_distance=128, scan_layers=True)
  ids = jax.ShapeDtypeStruct((1, 128), jnp.int32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), ids, ids)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
  assert count == 109_628_544


def test_float16_compute_runs_close(tmp_path):
  """The official conditioner runs T5 in float16; ours in float16 stays near the fp32 reference."""
  sd, inputs, outputs, meta = load_fixture('hf_t5_tiny')
  module, params = load_t5_from_dir(write_hf_folder(tmp_path / 'model', sd, meta['hf_config']),
                                    dtype=jnp.float16)
  out = module.apply({'params': params}, jnp.asarray(inputs['input_ids']),
                     jnp.asarray(inputs['attention_mask']))
  assert out.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(out, np.float32)))
  assert rel_err(np.asarray(out, np.float32), outputs['last_hidden_state']) <= 1e-2

"""Parity of `CLIPVisionTower` with Hugging Face CLIP's `last_hidden_state` (before post-LN).

Fixture tests/fixtures/hf_clip_tiny.npz was made by tests/make_hf_fixtures.py
(torch 2.13.0+cpu, transformers 4.46.3): `CLIPVisionModelWithProjection` (the class AudioX
uses; eager attention) at hidden 32, intermediate 48, 2 layers, 4 heads, image 32, patch 8
(17 tokens), projection 16, quick_gelu, eps 1e-5; every parameter re-drawn at random (seed 2;
norm scales 1 + 0.2 N(0, 1), biases 0.2 N(0, 1), embeddings N(0, 1), matrices N(0, 1/fan_in)).
'sd/' is what `save_pretrained` writes (vision_model.* incl. post_layernorm, plus
visual_projection). Inputs: two random uint8 frames (2, 3, 32, 32); 'pixels' =
(frames / 255 - CLIP mean) / CLIP std in torch float32, as the official conditioner computes;
'last_hidden_state' = model.vision_model(pixels).last_hidden_state.
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.hf import clip_vision_params, load_clip_vision_from_dir, read_hf_config
from axturbo.models.clip import CLIPVisionTower, preprocess_frames
from tests.fixture_io import load_fixture, rel_err, write_hf_folder

# The AudioX state dict stores the tower under this prefix (official_state_dict_keys.tsv).
AUDIOX_PREFIX = 'conditioner.conditioners.video_prompt.visual_encoder_model.'


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(x.shape), tree)


@pytest.mark.parametrize('scan', [False, True])
def test_parity_through_local_folder(tmp_path, scan):
  sd, inputs, outputs, meta = load_fixture('hf_clip_tiny')
  folder = write_hf_folder(tmp_path / 'model', sd, meta['hf_config'])
  module, params = load_clip_vision_from_dir(folder, scan_layers=scan)

  pixels = preprocess_frames(np.transpose(inputs['frames'], (0, 2, 3, 1)))
  assert rel_err(pixels, np.transpose(outputs['pixels'], (0, 2, 3, 1))) <= 1e-6

  expected = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), pixels)))
  assert jax.tree.structure(params) == jax.tree.structure(expected['params'])
  assert _shapes(params) == _shapes(expected['params'])

  out = jax.jit(module.apply)({'params': params}, pixels)
  err = rel_err(out, outputs['last_hidden_state'])
  assert err <= 1e-5, f'rel_err {err}'


def test_full_clip_config_and_audiox_prefix(tmp_path):
  """A CLIPModel-style config.json (vision_config nested) and the AudioX key prefix."""
  sd, inputs, outputs, meta = load_fixture('hf_clip_tiny')
  full_cfg = {'model_type': 'clip', 'vision_config': meta['hf_config'],
              'text_config': {'hidden_size': 8}}
  full = dict(sd, **{'text_model.embeddings.token_embedding.weight': np.ones((5, 8), np.float32),
                     'text_projection.weight': np.ones((16, 8), np.float32),
                     'logit_scale': np.ones((), np.float32)})
  folder = write_hf_folder(tmp_path / 'full', full, full_cfg)
  assert read_hf_config(folder)['hidden_size'] == 32
  module, params = load_clip_vision_from_dir(folder)

  audiox = StateDict({AUDIOX_PREFIX + k: v for k, v in sd.items()}, 'audiox')
  vision = audiox.scope(AUDIOX_PREFIX + 'vision_model.')
  params2 = clip_vision_params(vision, module)
  vision.skip('post_layernorm.weight')
  vision.skip('post_layernorm.bias')
  assert audiox.untaken() == [AUDIOX_PREFIX + 'visual_projection.weight']
  assert jax.tree.all(jax.tree.map(np.array_equal, params, params2))

  pixels = jnp.transpose(outputs['pixels'], (0, 2, 3, 1))
  assert rel_err(module.apply({'params': params2}, pixels), outputs['last_hidden_state']) <= 1e-5


def test_misshaped_and_unexpected_tensors(tmp_path):
  sd, _, _, meta = load_fixture('hf_clip_tiny')
  key = 'vision_model.encoder.layers.1.mlp.fc1.bias'
  bad = dict(sd, **{key: sd[key][:-1]})
  with pytest.raises(ConversionError, match=key.replace('.', r'\.')):
    load_clip_vision_from_dir(write_hf_folder(tmp_path / 'a', bad, meta['hf_config']))
  extra = dict(sd, **{'vision_model.encoder.layers.2.mlp.fc1.bias': sd[key]})
  with pytest.raises(ConversionError, match=r'layers\.2\.mlp'):
    load_clip_vision_from_dir(write_hf_folder(tmp_path / 'b', extra, meta['hf_config']))


def test_bad_inputs():
  module = CLIPVisionTower(hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                           image_size=16, patch_size=8)
  with pytest.raises(ValueError, match='channels-last'):
    module.init(jax.random.key(0), jnp.zeros((1, 3, 16, 16)))
  with pytest.raises(ValueError, match='channels-last'):
    preprocess_frames(np.zeros((2, 3, 16, 16)))


def test_vit_b32_param_count():
  """ViT-B/32 tower without post_layernorm / projection, against the official count.

  docs/official.md ("Networks and weights") counts CLIP as 87,849,216 under
  `...video_prompt.visual_encoder_model.`: that total includes post_layernorm (2 x 768) and
  visual_projection (512 x 768), which `last_hidden_state` does not use.
  """
  module = CLIPVisionTower(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                           image_size=224, patch_size=32, scan_layers=True)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), images))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  post_layernorm, visual_projection = 2 * 768, 512 * 768
  assert count == 87_454_464
  assert count + post_layernorm + visual_projection == 87_849_216

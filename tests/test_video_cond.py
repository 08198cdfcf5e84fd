"""Parity and behaviour tests for `axturbo.models.video_cond.VideoConditioner`.

Fixture tests/fixtures/video_cond.npz: official
`audiox_turbo.models.conditioners.CLIPWithSyncWithEmptyFeatureConditioner(output_dim=768)`
(commit af50898, torch 2.13.0+cpu) with its own modules replaced at a small size:
`Temp_transformer = SA_Transformer(32, depth 2, heads 2, dim_head 24, mlp 64)`,
`Temp_pos_embedding` (1, 4, 32), `proj = Linear(12, 8)`, `proj_sync = Linear(240, 8)`,
`empty_visual_feat` (1, 8, 32), `in_features = 12`, `out_features = 8`; every parameter
re-drawn (matrices N(0, 1/fan_in), embeddings and empty_visual_feat N(0, 1), biases
N(0, 0.2^2), LayerNorm scales 1 + N(0, 0.2^2)), `sync_weight = 0.7`. CLIP was replaced by a stub
returning `clip_tokens` (B*T, Q, D) as `last_hidden_state`, since this module starts after CLIP.
Inputs: raw `videos` (3, 4, 3, 4, 4) uint8 (item 0 random, item 1 all zeros, item 2 zero except
one value), `clip_tokens` (3, T=4, Q=3, 32) ~ N(0.1, 1.5^2), `sync` (3, 240, 32) ~ N(0, 1).
Output: the conditioner's tokens (3, 8, 32) and mask (3, 1).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.video_cond import video_conditioner_params
from axturbo.models.video_cond import VideoConditioner
from tests.fixture_io import load_fixture, rel_err


@pytest.fixture(scope='module')
def case():
  sd, inputs, outputs, meta = load_fixture('video_cond')
  model = VideoConditioner(**meta['config'])
  params = video_conditioner_params(StateDict(sd), model)
  return model, sd, params, inputs, outputs


def _run(model, params, inputs, is_empty=None):
  if is_empty is None:
    is_empty = VideoConditioner.is_empty_video(jnp.asarray(inputs['videos']))
  return model.apply({'params': params}, inputs['clip_tokens'], inputs['sync'], is_empty)


def test_is_empty_video(case):
  *_, inputs, _ = case
  # Torch layout (B, T, 3, H, W) and our (B, T, H, W, 3) give the same answer.
  videos = inputs['videos']
  expected = [False, True, False]
  assert VideoConditioner.is_empty_video(jnp.asarray(videos)).tolist() == expected
  assert VideoConditioner.is_empty_video(
      jnp.asarray(np.moveaxis(videos, 2, -1))).tolist() == expected


def test_parity(case):
  model, _, params, inputs, outputs = case
  out = _run(model, params, inputs)
  assert out.shape == outputs['out'].shape
  assert rel_err(out, outputs['out']) <= 1e-5
  for b in (0, 2):  # the non-empty items on their own (the empty one is a copy)
    assert rel_err(out[b], outputs['out'][b]) <= 1e-5
  np.testing.assert_array_equal(out[1], params['empty_visual_feat'])


def test_sync_and_empty_paths_are_live(case):
  model, _, params, inputs, outputs = case
  no_sync = dict(params, sync_weight=np.float32(0.0))
  assert rel_err(_run(model, no_sync, inputs)[0], outputs['out'][0]) > 1e-2
  out = _run(model, params, inputs, is_empty=jnp.zeros((3,), bool))
  assert rel_err(out[1], outputs['out'][1]) > 1e-2


def test_mapping_tree_matches_init(case):
  model, sd, params, inputs, _ = case
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.PRNGKey(0), inputs['clip_tokens'], inputs['sync'], jnp.zeros((3,), bool)
  )['params']))
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert all(jax.tree.leaves(jax.tree.map(lambda s, p: s.shape == p.shape, shapes, params)))
  # Scoped as in the full checkpoint; CLIP tensors are left for the CLIP loader.
  prefix = 'conditioner.conditioners.video_prompt.'
  full = {prefix + k: v for k, v in sd.items()}
  full[prefix + 'visual_encoder_model.vision_model.pre_layrnorm.weight'] = np.ones(4, np.float32)
  view = StateDict(full)
  video_conditioner_params(view.scope(prefix), model)
  assert view.untaken() == [prefix + 'visual_encoder_model.vision_model.pre_layrnorm.weight']


def test_misshaped_tensor_raises(case):
  model, sd, *_ = case
  bad = dict(sd, **{'proj.weight': np.zeros((8, 13), np.float32)})
  with pytest.raises(ConversionError, match="'proj.weight'"):
    video_conditioner_params(StateDict(bad), model)


def test_bad_inputs(case):
  model, _, params, inputs, _ = case
  empty = jnp.zeros((3,), bool)
  with pytest.raises(ValueError, match='clip_tokens'):
    model.apply({'params': params}, inputs['clip_tokens'][:, :3], inputs['sync'], empty)
  with pytest.raises(ValueError, match='sync'):
    model.apply({'params': params}, inputs['clip_tokens'], inputs['sync'][:, :10], empty)
  with pytest.raises(ValueError, match='is_empty'):
    model.apply({'params': params}, inputs['clip_tokens'], inputs['sync'], empty[:2])


def test_full_size_param_count():
  model = VideoConditioner()
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 50, 50, 768)), jnp.zeros((1, 240, 768)),
      jnp.zeros((1,), bool))['params'])
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(nn.unbox(shapes))) == 31_977_217

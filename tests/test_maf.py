"""Parity and behaviour tests for `axturbo.models.maf.MAFBlock`.

Fixture tests/fixtures/maf.npz: official `audiox_turbo.models.MAF.MAF_Block(dim=64,
num_experts_per_modality=8, num_heads=4, num_fusion_layers=2, mlp_ratio=4.0)` (commit af50898,
torch 2.13.0+cpu), every parameter re-drawn (matrices N(0, 1/fan_in), experts N(0, 1), biases
N(0, 0.2^2), LayerNorm scales 1 + N(0, 0.2^2), out_proj included), bypass gates set to
v=0.5, t=-0.3, a=0.8; eval mode. Inputs: text (2, 6, 64) ~ N(0.3, 1) with rows 4-5 of item 0
zeroed, video (2, 5, 64) ~ N(-0.2, 0.8^2), audio (2, 7, 64) ~ N(0, 1.3^2). Output: the official
call `torch.cat(list(maf_block(text, video, audio).values()), 1)` (text in slot v, video in
slot t), shape (2, 18, 64).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.maf import maf_params
from axturbo.models.maf import MAFBlock
from tests.fixture_io import load_fixture, rel_err


@pytest.fixture(scope='module')
def case():
  sd, inputs, outputs, meta = load_fixture('maf')
  c = meta['config']
  cfg = dict(dim=c['dim'], num_experts_per_modality=c['num_experts_per_modality'],
             num_heads=c['num_heads'], num_layers=c['num_fusion_layers'],
             mlp_ratio=c['mlp_ratio'])
  params = maf_params(StateDict(sd), MAFBlock(**cfg))
  args = (inputs['text'], inputs['video'], inputs['audio'])
  return cfg, sd, params, args, outputs['out']


def test_parity_eval(case):
  cfg, _, params, args, expected = case
  out = MAFBlock(**cfg).apply({'params': params}, *args)
  assert out.shape == expected.shape
  assert rel_err(out, expected) <= 1e-5
  # The gates are open enough that the refinement is far above the tolerance.
  assert rel_err(np.concatenate(args, axis=1), expected) > 1e-2


def test_output_order_and_broadcast_residual(case):
  cfg, _, params, args, _ = case
  out = np.asarray(MAFBlock(**cfg).apply({'params': params}, *args))
  text, video, audio = args
  lt, lv = text.shape[1], video.shape[1]
  # Each block is its own modality plus one vector broadcast over that block's tokens.
  for block, x in ((out[:, :lt], text), (out[:, lt:lt + lv], video), (out[:, lt + lv:], audio)):
    delta = block - x
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1], delta.shape), atol=1e-5)


def test_slot_swap_is_load_bearing(case):
  cfg, _, params, args, expected = case
  unswapped = MAFBlock(**cfg, modality_order=('video', 'text', 'audio'))
  out = unswapped.apply({'params': params}, *args)
  assert rel_err(out, expected) > 1e-2


@pytest.mark.slow
def test_dropout(case):
  cfg, _, params, args, expected = case
  model = MAFBlock(**cfg, dropout=0.1)
  key = jax.random.PRNGKey(3)
  det = model.apply({'params': params}, *args, deterministic=True, rngs={'dropout': key})
  np.testing.assert_array_equal(det, model.apply({'params': params}, *args))
  train = lambda k: model.apply({'params': params}, *args, deterministic=False,
                                rngs={'dropout': k})
  a, b, c = train(key), train(key), train(jax.random.PRNGKey(4))
  np.testing.assert_array_equal(a, b)
  assert rel_err(a, det) > 1e-3 and rel_err(c, a) > 1e-3
  # The explicit (dropout) attention path equals the fused one when nothing is dropped.
  tiny = MAFBlock(**cfg, dropout=1e-12).apply({'params': params}, *args, deterministic=False,
                                               rngs={'dropout': key})
  assert rel_err(tiny, expected) <= 1e-5


def test_mapping_tree_matches_init(case):
  cfg, sd, params, args, _ = case
  shapes = jax.eval_shape(
      lambda: nn.unbox(MAFBlock(**cfg).init(jax.random.PRNGKey(0), *args)['params']))
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert jax.tree.leaves(jax.tree.map(lambda s, p: s.shape == p.shape, shapes, params)) == \
      [True] * len(jax.tree.leaves(params))
  view = StateDict(sd)
  maf_params(view, MAFBlock(**cfg))
  assert view.untaken() == []


def test_misshaped_tensor_raises(case):
  cfg, sd, *_ = case
  bad = dict(sd)
  bad['fusion_transformer.layers.1.linear1.weight'] = np.zeros((3, 3), np.float32)
  with pytest.raises(ConversionError, match='fusion_transformer.layers.1.linear1.weight'):
    maf_params(StateDict(bad), MAFBlock(**cfg))
  del bad['fusion_transformer.layers.1.linear1.weight']
  with pytest.raises(ConversionError, match='missing'):
    maf_params(StateDict(bad), MAFBlock(**cfg))


def test_bad_inputs(case):
  cfg, _, params, (text, video, audio), _ = case
  model = MAFBlock(**cfg)
  with pytest.raises(ValueError, match='video'):
    model.apply({'params': params}, text, video[..., :-1], audio)
  with pytest.raises(ValueError, match='batch'):
    model.apply({'params': params}, text, video[:1], audio)
  with pytest.raises(ValueError, match='permutation'):
    MAFBlock(**cfg, modality_order=('text', 'text', 'audio')).apply({'params': params}, text,
                                                                     video, audio)


def test_full_size_param_count():
  x = jnp.zeros((1, 4, 768))
  shapes = jax.eval_shape(lambda: MAFBlock().init(jax.random.PRNGKey(0), x, x, x)['params'])
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(nn.unbox(shapes))) == 60_991_494

"""Parity and behaviour tests for `axturbo.models.disc_head`.

Fixture tests/fixtures/disc_head.npz: three official
`audiox_turbo.training.diffusion_lightning_dmd_withgan_noisylatent.DiscriminatorHead(
input_channels=8, hidden_dim=16)` (commit af50898, torch 2.13.0+cpu) in an `nn.ModuleList`
saved as 'discriminator_heads.{0,1,2}.net.{0,2,4,6}.*', every parameter re-drawn (weights
N(0, 1/fan_in), biases N(0, 0.2^2)). Input `feats` (K=3, B=2, C=8, T=22) ~ N(0, 1). Outputs:
`scores = torch.stack([head_k(feats[k]) for k], 0).mean(0)` (2, 1, 5) as the ablation wrapper
computes it, and `head0 = head_0(feats[0])`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.disc_head import disc_head_params, disc_heads_params
from axturbo.models.disc_head import DiscriminatorHead, DiscriminatorHeads
from tests.fixture_io import load_fixture, rel_err


@pytest.fixture(scope='module')
def case():
  sd, inputs, outputs, meta = load_fixture('disc_head')
  c = meta['config']
  feats = np.transpose(inputs['feats'], (0, 1, 3, 2))          # (K, B, T, C)
  return c, sd, feats, outputs


def _to_ours(logits):
  return np.transpose(logits, (0, 2, 1))


def test_heads_parity(case):
  c, sd, feats, outputs = case
  model = DiscriminatorHeads(c['num_heads'], c['in_channels'], c['hidden'])
  params = disc_heads_params(StateDict(sd), c['num_heads'], c['in_channels'], c['hidden'])
  out = model.apply({'params': params}, feats)
  assert out.shape == (2, DiscriminatorHead.output_length(22), 1) == (2, 5, 1)
  assert rel_err(out, _to_ours(outputs['scores'])) <= 1e-5
  per_head = model.apply({'params': params}, list(feats), average=False)
  assert rel_err(per_head[0], _to_ours(outputs['head0'])) <= 1e-5


def test_single_head_parity(case):
  c, sd, feats, outputs = case
  params = disc_head_params(StateDict(sd).scope('discriminator_heads.0.'), c['in_channels'],
                            c['hidden'])
  out = DiscriminatorHead(c['in_channels'], c['hidden']).apply({'params': params}, feats[0])
  assert rel_err(out, _to_ours(outputs['head0'])) <= 1e-5


def test_mapping_tree_and_unused_heads(case):
  c, sd, feats, _ = case
  k, cin, hid = c['num_heads'], c['in_channels'], c['hidden']
  full = dict(sd)
  shapes = {0: (hid, cin, 3), 2: (2 * hid, hid, 4), 4: (4 * hid, 2 * hid, 4), 6: (1, 4 * hid, 3)}
  for i in range(k, 24):  # the wrapper stores 24 heads; the extras must be skipped, not taken
    for j, shape in shapes.items():
      full[f'discriminator_heads.{i}.net.{j}.weight'] = np.zeros(shape, np.float32)
      full[f'discriminator_heads.{i}.net.{j}.bias'] = np.zeros(shape[:1], np.float32)
  view = StateDict(full)
  params = disc_heads_params(view, k, cin, hid)
  assert view.untaken() == []
  model = DiscriminatorHeads(k, cin, hid)
  init = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), feats)['params']))
  assert jax.tree.structure(init) == jax.tree.structure(params)
  assert all(jax.tree.leaves(jax.tree.map(lambda s, p: s.shape == p.shape, init, params)))


def test_misshaped_tensor_raises(case):
  c, sd, *_ = case
  bad = dict(sd, **{'discriminator_heads.2.net.4.weight': np.zeros((1, 1, 1), np.float32)})
  with pytest.raises(ConversionError, match='discriminator_heads.2.net.4.weight'):
    disc_heads_params(StateDict(bad), c['num_heads'], c['in_channels'], c['hidden'])


def test_bad_inputs(case):
  c, sd, feats, _ = case
  model = DiscriminatorHeads(c['num_heads'], c['in_channels'], c['hidden'])
  params = disc_heads_params(StateDict(sd), c['num_heads'], c['in_channels'], c['hidden'])
  with pytest.raises(ValueError, match='read-outs'):
    model.apply({'params': params}, feats[:2])
  with pytest.raises(ValueError, match=r'\(B, T, 8\)'):
    model.apply({'params': params}, feats[..., :4])


def test_full_size():
  x = jnp.zeros((1, 236, 64))
  head = jax.eval_shape(lambda: DiscriminatorHead().init(jax.random.PRNGKey(0), x)['params'])
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(nn.unbox(head))) == 682_369
  heads = DiscriminatorHeads(num_heads=6)
  shapes = jax.eval_shape(lambda: heads.init(jax.random.PRNGKey(0), jnp.zeros((6, 1, 236, 64))))
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(nn.unbox(shapes))) == 6 * 682_369
  out = jax.eval_shape(lambda: heads.apply(nn.unbox(shapes), jnp.zeros((6, 2, 236, 64))))
  assert out.shape == (2, 59, 1)

"""Parity and conversion tests for the Oobleck VAE (axturbo.models.vae, axturbo.convert.vae).

Fixture tests/fixtures/vae_small.npz: made with the official `AutoencoderPretransform` built by
`audiox_turbo.models.factory.create_pretransform_from_config` (commit af50898, torch 2.13.0+cpu)
with an `oobleck` encoder/decoder (use_snake, final_tanh false), `vae` bottleneck, channels 8,
c_mults [1, 2, 4], strides [2, 4, 2], latent_dim 16, io_channels 2, iterate_batch true. Every
parameter was randomized in float32 (weight_g ~ U(0.5, 0.8), weight_v ~ N(0, 1/fan_in), bias
~ N(0, 0.1²), Snake log-alpha/log-beta ~ N(0, 0.25²)), then the module was run in float64 and the
outputs stored as float32. Inputs: audio (2, 2, 325) ~ N(0, 0.5²) (325 is not a multiple of 16,
so the per-stride floor is exercised; T = 20); the posterior eps drawn by `torch.randn_like` inside
the official bottleneck was recorded (rounded to float32) and is injected here; latents
(2, 16, 20) ~ N(0, 1) for a standalone decode. Outputs: the encoder output before the bottleneck,
its mean half, the sampled z, decode(z) and decode(latents).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.vae import vae_params
from axturbo.models.vae import ConvTranspose1d, OobleckVAE, encoded_length
from tests.fixture_io import load_fixture, rel_err
from tests.key_recorder import OFFICIAL_KEYS, KeyRecorder, official_shapes

TOL = 1e-5


def _t(x):
  """torch (B, C, T) <-> ours (B, T, C)."""
  return np.swapaxes(np.asarray(x), 1, 2)


@pytest.fixture(scope='module')
def setup():
  sd, ins, outs, meta = load_fixture('vae_small')
  model = OobleckVAE(channels=meta['channels'], c_mults=tuple(meta['c_mults']),
                     strides=tuple(meta['strides']), latent_dim=meta['latent_dim'])
  view = StateDict(sd, 'vae_small.npz')
  params = vae_params(view, model)
  assert view.untaken() == []
  return model, params, ins, outs


def test_encoder_output_matches_official(setup):
  model, params, ins, outs = setup
  pre = model.apply({'params': params}, _t(ins['audio']),
                    method=lambda m, a: m.encoder(a))
  assert pre.shape == (2, 20, 32)
  assert rel_err(pre, _t(outs['pre_bottleneck'])) <= TOL


def test_encode_with_injected_eps_matches_official(setup):
  model, params, ins, outs = setup
  z = model.apply({'params': params}, _t(ins['audio']), _t(ins['eps']), method=model.encode)
  assert z.shape == (2, 20, 16)
  assert rel_err(z, _t(outs['z'])) <= TOL


def test_encode_deterministic_is_the_posterior_mean(setup):
  model, params, ins, outs = setup
  z = model.apply({'params': params}, _t(ins['audio']), deterministic=True, method=model.encode)
  assert rel_err(z, _t(outs['mean'])) <= TOL


def test_encode_sampling_uses_rng(setup):
  model, params, ins, _ = setup
  x = _t(ins['audio'])
  enc = lambda **kw: model.apply({'params': params}, x, method=model.encode, **kw)
  a, b = enc(rng=jax.random.PRNGKey(1)), enc(rng=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, enc(rng=jax.random.PRNGKey(1)))
  assert not np.allclose(a, b)
  # Without an explicit key the 'sample' rng stream is used.
  c = enc(rngs={'sample': jax.random.PRNGKey(1)})
  mean = enc(deterministic=True)
  assert c.shape == mean.shape and not np.allclose(c, mean)


@pytest.mark.parametrize('source,target', [('z', 'decoded_z'), ('latents', 'decoded_latents')])
def test_decode_matches_official(setup, source, target):
  model, params, ins, outs = setup
  latents = outs[source] if source == 'z' else ins[source]
  y = model.apply({'params': params}, _t(latents), method=model.decode)
  assert y.shape == (2, 20 * 16, 2)
  assert rel_err(y, _t(outs[target])) <= TOL


def test_mapping_tree_matches_init(setup):
  model, params, ins, _ = setup
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _t(ins['audio']))['params'])
  shapes = nn.unbox(boxed)
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  jax.tree.map(lambda s, p: np.testing.assert_equal(s.shape, p.shape), shapes, params)
  # Every parameter carries one logical axis name per dimension.
  for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim


def test_misshaped_tensor_raises_naming_the_key():
  sd, _, _, meta = load_fixture('vae_small')
  model = OobleckVAE(channels=meta['channels'], c_mults=tuple(meta['c_mults']),
                     strides=tuple(meta['strides']), latent_dim=meta['latent_dim'])
  key = 'decoder.layers.2.layers.1.weight_v'
  sd = dict(sd, **{key: sd[key][:, :-1]})
  with pytest.raises(ConversionError, match=key.replace('.', r'\.')):
    vae_params(StateDict(sd, 'bad.ckpt'), model)


def test_conv_transpose_matches_definition_odd_stride():
  """Checks the transposed conv against its definition, also for an odd stride (L·s - 1)."""
  rng = np.random.default_rng(0)
  for stride in (2, 3):
    k, p = 2 * stride, math.ceil(stride / 2)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 4, k)).astype(np.float32)  # torch layout (in, out, k)
    b = rng.standard_normal(4).astype(np.float32)
    full = np.zeros((2, (5 - 1) * stride + k, 4))
    for t in range(5):
      full[:, t * stride:t * stride + k] += np.einsum('bi,iok->bko', x[:, t], w)
    expect = full[:, p:full.shape[1] - p] + b
    params = {'kernel': w.transpose(2, 0, 1)[::-1], 'bias': b}
    y = ConvTranspose1d(4, k, stride, p).apply({'params': params}, x)
    assert y.shape == expect.shape
    assert rel_err(y, expect) <= TOL


def test_bad_inputs_raise(setup):
  model, params, _, _ = setup
  with pytest.raises(ValueError, match='channels-last'):
    model.apply({'params': params}, jnp.zeros((1, 2, 400)), deterministic=True,
                method=model.encode)
  with pytest.raises(ValueError, match='too short'):
    model.apply({'params': params}, jnp.zeros((1, 15, 2)), deterministic=True,
                method=model.encode)
  with pytest.raises(ValueError, match='latents'):
    model.apply({'params': params}, jnp.zeros((1, 20, 64)), method=model.decode)
  with pytest.raises(ValueError, match='noise'):
    model.apply({'params': params}, jnp.zeros((1, 320, 2)), jnp.zeros((1, 21, 16)),
                method=model.encode)


def test_encoded_length_follows_torch_floor():
  assert encoded_length(441000, (2, 4, 4, 8, 8)) == 215
  assert encoded_length(485100, (2, 4, 4, 8, 8)) == 236
  assert encoded_length(325, (2, 4, 2)) == 20


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _weight_norm_gains(tree) -> int:
  """Gains g the official weight-normed convs have per kernel: one per output channel (conv) or
  per input channel (transposed conv, where torch's weight axis 0 is `in`)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names = [getattr(k, 'key', None) for k in path]
    if names[-1] == 'kernel':
      total += leaf.shape[1] if names[-2] == 'conv_t' else leaf.shape[2]
  return total


def test_full_size_param_counts():
  """Official: encoder 77,989,888 and decoder 78,122,626 parameters, counting the weight-norm
  gains that we fold into the kernels at load time."""
  shapes = nn.unbox(jax.eval_shape(
      lambda: OobleckVAE().init(jax.random.PRNGKey(0), jnp.zeros((1, 4096, 2)))['params']))
  enc, dec = shapes['encoder'], shapes['decoder']
  assert _count(enc) + _weight_norm_gains(enc) == 77_989_888
  assert _count(dec) + _weight_norm_gains(dec) == 78_122_626
  assert (_count(enc), _count(dec)) == (77_973_376, 78_104_320)


@pytest.mark.skipif(not OFFICIAL_KEYS.exists(), reason='official key list not available')
def test_full_size_mapping_reads_exactly_the_official_keys():
  rec = KeyRecorder()
  vae_params(rec, OobleckVAE())
  assert rec.taken == official_shapes('pretransform.model.')
  assert not rec.skipped

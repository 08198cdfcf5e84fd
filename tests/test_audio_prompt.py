"""Parity and behaviour tests for the audio-prompt conditioner (axturbo.models.audio_prompt).

Fixture tests/fixtures/audio_prompt_small.npz: made with the official
`AudioAutoencoderConditioner` (conditioners.py, commit af50898, torch 2.13.0+cpu) wrapping an
`AutoencoderPretransform` with the same small VAE as test_vae.py (channels 8, c_mults [1, 2, 4],
strides [2, 4, 2], latent_dim 16, vae bottleneck), output_dim 32, latent_seq_len 20 (so
proj_features_128 is Linear(20, 128)), mask_ratio_start 0.25, mask_ratio_end 0.75 (the official
always-on span masking). All parameters randomized in float32 (VAE as in test_vae.py; Linear
weights ~ N(0, 1/in), biases ~ N(0, 0.1²)); the conditioner ran in float64, outputs stored as
float32. Three calls, each `cond(list_of_(1, C, N)_prompts, 'cpu')`:
  'stereo': two stereo prompts of 325 and 300 samples (the second right-padded by the module),
  'silent': one all-zero stereo prompt of 325 samples,
  'mono':   two mono prompts of 325 samples (duplicated to stereo by set_audio_channels).
The mask ratios (`torch.rand`) and starts (`torch.randint`) drawn inside `mask_audio` and the
posterior eps (`torch.randn_like`) were recorded; spans (start, int(N·ratio)) and eps are injected
here. The generator checked that each recorded span is all zeros in the masked waveform.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.vae import audio_prompt_params
from axturbo.models.audio_prompt import (AudioPromptConditioner, apply_spans, batch_prompts,
                                         mask_audio, random_spans)
from tests.fixture_io import load_fixture, rel_err
from tests.key_recorder import OFFICIAL_KEYS, KeyRecorder, official_shapes

TOL = 1e-5
PREFIX = 'conditioner.conditioners.audio_prompt.'


def _model(meta, **kw):
  return AudioPromptConditioner(channels=meta['channels'], c_mults=tuple(meta['c_mults']),
                                strides=tuple(meta['strides']), latent_dim=meta['latent_dim'],
                                latent_seq_len=meta['latent_seq_len'],
                                output_dim=meta['output_dim'], **kw)


@pytest.fixture(scope='module')
def setup():
  sd, ins, outs, meta = load_fixture('audio_prompt_small')
  model = _model(meta)
  view = StateDict(sd, 'audio_prompt_small.npz')
  params = audio_prompt_params(view, model)
  assert view.untaken() == []  # the VAE copy's decoder is skipped, not left behind
  return model, params, ins, outs, meta


def _prompts(ins, case):
  keys = sorted(k for k in ins if k.startswith(f'{case}/prompt'))
  return [ins[k].T for k in keys]  # (C, N) -> (N, C)


@pytest.mark.parametrize('case', ['stereo', 'silent', 'mono'])
def test_matches_official_with_explicit_spans_and_eps(setup, case):
  model, params, ins, outs, _ = setup
  audio = batch_prompts(_prompts(ins, case))
  spans = (ins[f'{case}/starts'], ins[f'{case}/lengths'])
  y = model.apply({'params': params}, audio, spans=spans,
                  noise=np.swapaxes(ins[f'{case}/eps'], 1, 2))
  assert y.shape == outs[case].shape and y.shape[1:] == (128, 32)
  assert rel_err(y, outs[case]) <= TOL


def test_mono_batch_array_is_duplicated(setup):
  """A (B, N, 1) array gives the same tokens as its explicit stereo copy."""
  model, params, ins, _, _ = setup
  mono = np.stack(_prompts(ins, 'mono'))
  run = lambda a: model.apply({'params': params}, a, deterministic=True)
  np.testing.assert_array_equal(run(mono), run(np.repeat(mono, 2, axis=-1)))


def test_batch_prompts_pads_right_and_makes_stereo():
  a = np.arange(6, dtype=np.float32)
  b = np.ones((4, 3), np.float32)
  out = batch_prompts([a, b])
  assert out.shape == (2, 6, 2)
  np.testing.assert_array_equal(out[0], np.stack([a, a], -1))
  np.testing.assert_array_equal(out[1, :4], 1.0)
  np.testing.assert_array_equal(out[1, 4:], 0.0)


def test_masking_is_off_by_default(setup):
  model, params, ins, _, meta = setup
  audio = batch_prompts(_prompts(ins, 'stereo'))
  assert not model.official_masking
  # Deterministic and unmasked: needs no rng at all, and equals an empty-span call.
  plain = model.apply({'params': params}, audio, deterministic=True)
  empty = (np.zeros(2, np.int32), np.zeros(2, np.int32))
  np.testing.assert_array_equal(plain, model.apply({'params': params}, audio, spans=empty,
                                                   deterministic=True))
  official = _model(meta, official_masking=True)
  masked = official.apply({'params': params}, audio, deterministic=True,
                          rng=jax.random.PRNGKey(0))
  assert rel_err(masked, plain) > 1e-3


def test_official_mode_uses_the_documented_span_rule(setup):
  """In official mode the rng is split into (mask key, noise key)."""
  _, params, ins, _, meta = setup
  audio = batch_prompts(_prompts(ins, 'stereo'))
  key = jax.random.PRNGKey(3)
  mask_key, noise_key = jax.random.split(key)
  official = _model(meta, official_masking=True)
  got = official.apply({'params': params}, audio, rng=key)
  spans = random_spans(mask_key, 2, audio.shape[1])
  noise = jax.random.normal(noise_key, (2, meta['latent_seq_len'], meta['latent_dim']))
  want = official.apply({'params': params}, audio, spans=spans, noise=noise)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_mask_audio_zeroes_one_span_of_25_to_75_percent():
  n, batch = 1000, 256
  audio = jnp.ones((batch, n, 2))
  masked, starts, lengths = mask_audio(jax.random.PRNGKey(0), audio)
  masked, starts, lengths = map(np.asarray, (masked, starts, lengths))
  assert lengths.min() >= 250 and lengths.max() <= 749
  assert lengths.max() - lengths.min() > 300  # spread over the range, not a constant
  assert starts.min() >= 0 and np.all(starts + lengths <= n)
  for b in range(batch):
    zero = np.flatnonzero(masked[b, :, 0] == 0)
    assert len(zero) == lengths[b]
    np.testing.assert_array_equal(zero, np.arange(starts[b], starts[b] + lengths[b]))
    np.testing.assert_array_equal(masked[b, :, 0], masked[b, :, 1])


def test_apply_spans_only_touches_the_span():
  audio = jnp.arange(20.0).reshape(1, 10, 2) + 1
  out = np.asarray(apply_spans(audio, np.array([3]), np.array([4])))
  np.testing.assert_array_equal(out[0, 3:7], 0)
  np.testing.assert_array_equal(out[0, :3], np.asarray(audio)[0, :3])
  np.testing.assert_array_equal(out[0, 7:], np.asarray(audio)[0, 7:])


def test_mapping_tree_matches_init(setup):
  model, params, ins, _, _ = setup
  audio = batch_prompts(_prompts(ins, 'silent'))
  boxed = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), audio, deterministic=True)['params'])
  shapes = nn.unbox(boxed)
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  jax.tree.map(lambda s, p: np.testing.assert_equal(s.shape, p.shape), shapes, params)
  for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim


def test_misshaped_tensor_raises_naming_the_key(setup):
  model = setup[0]
  sd, _, _, _ = load_fixture('audio_prompt_small')
  key = 'proj_features_128.weight'
  sd = dict(sd, **{key: sd[key][:, :-1]})
  with pytest.raises(ConversionError, match=r'proj_features_128\.weight'):
    audio_prompt_params(StateDict(sd, 'bad.ckpt'), model)


def test_bad_inputs_raise(setup):
  model, params, ins, _, meta = setup
  with pytest.raises(ValueError, match='latent_seq_len'):
    model.apply({'params': params}, jnp.zeros((1, 400, 2)), deterministic=True)
  with pytest.raises(ValueError, match='noise'):
    model.apply({'params': params}, jnp.zeros((1, 325, 2)), noise=jnp.zeros((1, 21, 16)))
  with pytest.raises(ValueError, match='channels-last'):
    model.apply({'params': params}, jnp.zeros((325, 2)), deterministic=True)


@pytest.mark.skipif(not OFFICIAL_KEYS.exists(), reason='official key list not available')
def test_full_size_mapping_reads_exactly_the_official_keys():
  rec = KeyRecorder()
  audio_prompt_params(rec, AudioPromptConditioner())
  official = official_shapes(PREFIX)
  decoder = {k for k in official if k.startswith('pretransform.model.decoder.')}
  assert rec.skipped == decoder
  assert rec.taken == {k: v for k, v in official.items() if k not in decoder}

"""Tests for the patch codec (axturbo.models.patch_codec) and codec selection (models.codec).

The mel codec of configs/tiny.py has its own tests (tests/test_mel_codec.py).

Reference numbers: scipy.fft.dct(type 2, norm='ortho') for the frame transform; exact
reconstruction and the latent scale are checked on clips of the embedded dataset.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.fft

from axturbo.data import embedded
from axturbo.models import audiox
from axturbo.models import codec as codec_lib
from axturbo.models.patch_codec import PatchCodec, dct_matrix
from axturbo.models.vae import OobleckVAE
from configs import official, tiny

N = 32768


@pytest.fixture(scope='module')
def clips():
  """(6, N, 2): the first N samples of six 4 s training clips at 16 kHz (events in every one)."""
  return np.stack([embedded.make_clip(i, 'train', 16000, 4.0)['waveform'][:N] for i in range(6)])


def patch_config():
  """configs/tiny.py's model on the patch codec (hop 128: 256 frames x 256 channels), as it
  was before the mel codec replaced it there."""
  m = tiny.model_config()
  m.codec = 'patch'
  m.patch = ml_collections.ConfigDict(dict(hop=128, transform='dct', scale=0.16))
  m.trunk.update(io_channels=256, embed_dim=256, seq_len=256)
  m.disc.in_channels = 256
  m.audio_prompt.latent_seq_len = 256
  return m


@pytest.fixture(scope='module')
def codec():
  return codec_lib.build_codec(patch_config())


def _encode(codec, x):
  return np.asarray(codec.apply({}, jnp.asarray(x), method='encode'))


def _decode(codec, z):
  return np.asarray(codec.apply({}, jnp.asarray(z), method='decode'))


def test_dct_matrix_matches_scipy():
  x = np.random.default_rng(0).normal(size=(5, 16))
  np.testing.assert_allclose(x @ dct_matrix(16).T, scipy.fft.dct(x, type=2, norm='ortho'),
                             atol=1e-12)
  np.testing.assert_allclose(dct_matrix(16) @ dct_matrix(16).T, np.eye(16), atol=1e-12)


def test_encode_matches_numpy_reference():
  """Latent channel k of the mid half is DCT coefficient k of (l + r)/√2 in that frame."""
  x = np.random.default_rng(1).normal(size=(2, 64, 2)).astype(np.float32)
  z = _encode(PatchCodec(hop=16, scale=0.5), x)
  assert z.shape == (2, 4, 32)
  frames = x.reshape(2, 4, 16, 2).astype(np.float64)
  mid = (frames[..., 0] + frames[..., 1]) / np.sqrt(2)
  side = (frames[..., 0] - frames[..., 1]) / np.sqrt(2)
  want = np.concatenate([scipy.fft.dct(mid, norm='ortho'), scipy.fft.dct(side, norm='ortho')],
                        -1) / 0.5
  np.testing.assert_allclose(z, want, atol=1e-5)


@pytest.mark.parametrize('transform', ['dct', 'identity'])
def test_round_trip_exact_on_embedded_clips(clips, transform):
  codec = PatchCodec(hop=128, transform=transform, scale=0.16)
  y = _decode(codec, _encode(codec, clips))
  assert y.shape == clips.shape
  snr = 10 * np.log10(np.sum(clips ** 2) / np.sum((y - clips) ** 2))
  assert snr > 110, snr                      # float32 rounding only
  assert np.max(np.abs(y - clips)) < 1e-5


def test_tiny_latents_shape_and_unit_scale(clips, codec):
  z = _encode(codec, clips)
  m = patch_config()
  assert z.shape == (6,) + codec_lib.latent_shape(m, N) == (6, m.trunk.seq_len,
                                                             m.trunk.io_channels)
  assert codec.hop_length == codec_lib.hop_length(m) == 128
  # Rectified flow pairs the latents with N(0, 1) noise: they must be of unit order.
  assert 0.6 < z.std() < 1.6, z.std()
  assert abs(z.mean()) < 0.05


def test_tone_lands_in_its_band_and_centre_pan_has_no_side(codec):
  """A centred 1 kHz tone: all energy in the mid half, around DCT channel 2·hop·f/sr = 16."""
  t = np.arange(N) / 16000
  tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
  z = _encode(codec, np.stack([tone, tone], -1)[None])
  assert np.max(np.abs(z[..., 128:])) < 1e-5
  energy = np.sum(z[0, :, :128] ** 2, axis=0)
  assert np.argmax(energy) in (15, 16)
  assert energy[12:20].sum() > 0.9 * energy.sum()


def test_noise_argument_is_shape_checked_and_ignored(clips, codec):
  z = _encode(codec, clips[:1])
  with_noise = codec.apply({}, jnp.asarray(clips[:1]), jnp.ones(z.shape), method='encode')
  np.testing.assert_array_equal(np.asarray(with_noise), z)
  with pytest.raises(ValueError, match='latent shape'):
    codec.apply({}, jnp.asarray(clips[:1]), jnp.ones((1, 3, 3)), method='encode')


def test_bad_inputs_raise_clear_errors(codec):
  with pytest.raises(ValueError, match='stereo'):
    codec.apply({}, jnp.zeros((1, 256, 1)), method='encode')
  with pytest.raises(ValueError, match='multiple of the patch codec hop 128'):
    codec.apply({}, jnp.zeros((1, 300, 2)), method='encode')
  with pytest.raises(ValueError, match=r'latents must be \(B, T, 256\)'):
    codec.apply({}, jnp.zeros((1, 4, 16)), method='decode')
  with pytest.raises(ValueError, match='transform'):
    PatchCodec(hop=8, transform='fft')
  with pytest.raises(ValueError, match='scale'):
    PatchCodec(hop=8, scale=0.0)


def test_no_parameters(codec):
  variables = jax.jit(codec.init)(jax.random.PRNGKey(0), jnp.zeros((1, 256, 2)))
  assert not jax.tree.leaves(variables)


def test_codec_selection_and_config_checks():
  off = official.model_config()
  assert off.codec == 'oobleck'
  assert isinstance(codec_lib.build_codec(off), OobleckVAE)
  assert codec_lib.latent_shape(off, off.audio_samples) == (236, 64)
  del off.codec                              # configs saved before the field: Oobleck
  assert codec_lib.codec_name(off) == 'oobleck'
  off.codec = 'wavelet'
  with pytest.raises(ValueError, match='model.codec must be one of'):
    codec_lib.build_codec(off)

  m = patch_config()
  audiox.check_model_config(m)
  m.audio_samples = 32768 + 64
  with pytest.raises(ValueError, match='not a multiple of model.patch.hop=128'):
    audiox.check_model_config(m)
  m = patch_config()
  m.trunk.io_channels = m.disc.in_channels = 16
  with pytest.raises(ValueError, match="io_channels=16 but model.codec='patch' makes 256"):
    audiox.check_model_config(m)
  m = tiny.model_config()
  m.audio_samples = 32768 + 64
  with pytest.raises(ValueError, match='not a multiple of model.mel.hop=512'):
    audiox.check_model_config(m)
  m = patch_config()
  m.trunk.embed_dim = 128
  with pytest.raises(ValueError, match='embed_dim=128 < model.trunk.io_channels=256'):
    audiox.check_model_config(m)


def test_tiny_audiox_latents_round_trip_without_codec_params(clips):
  """AudioX.encode_latents / decode_latents on the patch codec: exact, and need no 'vae' params."""
  model = audiox.build_model(patch_config())
  z = jax.jit(lambda a: model.apply({'params': {}}, a, method='encode_latents'))(clips[:2])
  m = patch_config()
  assert z.shape == (2, m.trunk.seq_len, m.trunk.io_channels)
  y = jax.jit(lambda z: model.apply({'params': {}}, z, method='decode_latents'))(z)
  np.testing.assert_allclose(np.asarray(y), clips[:2], atol=1e-5)

"""Tests for the log-mel codec (axturbo.models.mel_codec) and the prompt path through it.

References: librosa's Slaney mel filterbank and STFT; the round trip is judged by the exact event
detector on embedded clips, which is what the small configs' benchmark judges.
"""
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from axturbo.data import embedded
from axturbo.eval import event_scores
from axturbo.eval import event_detector
from axturbo.models import audiox
from axturbo.models import codec as codec_lib
from axturbo.models import mel_codec
from configs import tiny

N = 32768


@pytest.fixture(scope='module')
def codec():
  return codec_lib.build_codec(tiny.model_config())


def test_tiny_config_uses_the_mel_codec(codec):
  m = tiny.model_config()
  assert isinstance(codec, mel_codec.MelCodec)
  assert codec_lib.latent_shape(m, N) == (64, 128) == (m.trunk.seq_len, m.trunk.io_channels)
  assert codec_lib.hop_length(m) == 512
  assert codec.init(jax.random.key(0), jnp.zeros((1, N, 2))) == {}


def test_filterbank_matches_librosa():
  ours = mel_codec.mel_filterbank(16000, 512, 64, 0.0, 8000.0)
  want = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=0.0, fmax=8000.0)
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-7)


def test_stft_matches_librosa_and_istft_inverts_it():
  x = np.random.default_rng(0).normal(size=(2, 4096)).astype(np.float32)
  spec = np.asarray(mel_codec.stft(jnp.asarray(x), 512, 128))
  want = librosa.stft(x, n_fft=512, hop_length=128, window='hann', center=True,
                      pad_mode='reflect')                     # (2, 257, 4096 / 128 + 1)
  assert spec.shape == (2, 32, 257)
  np.testing.assert_allclose(spec, np.swapaxes(want, 1, 2)[:, :32], atol=2e-4)
  back = np.asarray(mel_codec.istft(jnp.asarray(spec), 512, 128))
  # The frame centred on sample N is dropped, so only the last half window lacks full overlap.
  np.testing.assert_allclose(back[:, :-256], x[:, :-256], atol=1e-5)


def test_encode_matches_a_numpy_reference(codec):
  x = np.random.default_rng(1).uniform(-0.5, 0.5, size=(1, N, 2)).astype(np.float32)
  z = np.asarray(codec.apply({}, jnp.asarray(x), method='encode'))
  mono = x[0].mean(-1)
  mag = np.abs(librosa.stft(mono, n_fft=1024, hop_length=512, center=True, pad_mode='reflect'))
  mel = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128) @ mag[:, :64]
  want = (np.log(mel + codec.eps) - codec.mean) / codec.std
  np.testing.assert_allclose(z[0], want.T, atol=2e-4)


def test_decoding_is_finite_for_any_finite_latent(codec):
  """The ceiling sits 1e6 above the loudest [-1, 1] signal's mel values, so real spectra are
  never clipped, and latents far beyond it (an untrained model's) still decode to finite audio."""
  loudest = codec.log_mel_ceiling() - np.log(1e6)
  t = np.arange(N) / 16000
  for signal in (np.ones(N), np.sin(2 * np.pi * 1000 * t), np.sign(np.sin(2 * np.pi * 997 * t))):
    x = jnp.asarray(np.stack([signal, signal], -1)[None], jnp.float32)
    z = np.asarray(codec.apply({}, x, method='encode'))
    assert (z * codec.std + codec.mean).max() <= loudest + 1e-4
  for value in (30.0, 1e4):
    wave = codec.apply({}, jnp.full((1, 64, 128), value), method='decode')
    assert np.isfinite(np.asarray(wave)).all()


def test_nonnegative_magnitude_fits_the_mel_values():
  basis = mel_codec.mel_filterbank(16000, 512, 64, 0.0, 8000.0)
  truth = np.random.default_rng(2).exponential(size=(1, 3, 257)).astype(np.float32)
  mel = truth @ basis.T
  est = np.asarray(mel_codec.nonnegative_magnitude(jnp.asarray(mel), basis, 16))
  assert est.min() >= 0.0
  pinv = np.maximum(mel @ np.linalg.pinv(basis).T, 0.0)
  # The NNLS updates never increase the mel error of the clipped pseudo-inverse start.
  assert np.linalg.norm(est @ basis.T - mel) <= np.linalg.norm(pinv @ basis.T - mel)
  assert np.linalg.norm(est @ basis.T - mel) < 0.05 * np.linalg.norm(mel)


def test_round_trip_keeps_every_event(codec):
  """decode(encode(x)) of held-out clips: the detector finds the annotated events, exactly."""
  clips = [embedded.make_clip(i, 'heldout', 16000, 2.0) for i in range(4)]
  x = np.stack([np.pad(c['waveform'], ((0, N - 32000), (0, 0))) for c in clips])
  y = np.asarray(jax.jit(codec.__call__)(jnp.asarray(x)))
  assert y.shape == x.shape and np.all(np.isfinite(y))
  np.testing.assert_array_equal(y[..., 0], y[..., 1])
  for clip, wave in zip(clips, y):
    scores = event_scores.score_clip(event_detector.detect_events(wave[:32000], 16000),
                                     clip['annotations'])
    assert all(scores.values()), (clip['annotations']['SED'], scores)


def test_decode_is_deterministic_and_silence_stays_quiet(codec):
  z = jnp.asarray(codec.apply({}, jnp.zeros((1, N, 2)), method='encode'))
  a = np.asarray(codec.apply({}, z, method='decode'))
  b = np.asarray(codec.apply({}, z, method='decode'))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a).max() < 1e-6


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match='multiple of hop'):
    mel_codec.MelCodec(n_fft=500, hop=256)
  with pytest.raises(ValueError, match='cover no FFT bin'):
    mel_codec.MelCodec(n_fft=64, hop=32, n_mels=64)
  with pytest.raises(ValueError, match='multiple of the mel codec hop'):
    mel_codec.MelCodec().apply({}, jnp.zeros((1, 1000, 2)), method='encode')


def test_prompt_conditioner_shares_the_target_codec(tiny_params):
  """encoder='codec': no own VAE parameters, and the tokens are an affine map of the codec's
  latents of the prompt."""
  m = tiny.model_config()
  model = audiox.build_model(m)
  params = tiny_params
  assert set(params['audio_prompt']) == {'proj_features_128', 'proj_out'}
  prompt = jnp.asarray(embedded.make_clip(0, 'train', 16000, 2.0)['waveform'][None])
  prompt = jnp.pad(prompt, ((0, 0), (0, N - 32000), (0, 0)))
  tokens = model.apply({'params': params}, prompt, method='encode_audio_prompt')
  z = model.apply({'params': params}, prompt, method='encode_latents')
  p = params['audio_prompt']
  want = (jnp.swapaxes(z, 1, 2) @ p['proj_features_128']['kernel']
          + p['proj_features_128']['bias'])
  want = jnp.swapaxes(want, 1, 2) @ p['proj_out']['kernel'] + p['proj_out']['bias']
  assert tokens.shape == (1, m.audio_prompt.prompt_tokens, m.cond_dim)
  np.testing.assert_allclose(np.asarray(tokens), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_prompt_encoder_codec_needs_a_parameter_free_codec():
  m = tiny.model_config()
  m.codec = 'oobleck'
  with pytest.raises(ValueError, match="audio_prompt.encoder='codec' needs"):
    audiox.build_model(m, check=False)

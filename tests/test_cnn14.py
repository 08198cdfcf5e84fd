"""PANNs CNN14 port: parity with the public PyTorch reference and the checkpoint loader.

Fixture tests/fixtures/cnn14_small.npz: `python -m tests.fixtures.make_official --only
cnn14_small` (tests/fixtures/README.md says how to point it at the reference). It imports the
public reference, qiuqiangkong/audioset_tagging_cnn pytorch/models.py (Cnn14, ConvBlock) at d2f4b8c
with qiuqiangkong/torchlibrosa (Spectrogram, LogmelFilterBank) at d4e8add, builds (torch seed 0)
Cnn14(sample_rate=8000, window_size=256, hop_size=80, mel_bins=64, fmin=50, fmax=3500,
classes_num=527), and, because the reference hard-codes its widths, re-instantiates
conv_block1..6 with the reference ConvBlock class (its xavier init) at widths
(8, 16, 16, 32, 32, 64) and fc1 / fc_audioset as torch-default nn.Linear at 64 hidden units. Every
BatchNorm is re-drawn (torch generator seed 81): weight 1 + N(0, 0.2^2), bias N(0, 0.2^2), running
mean N(0, 0.5^2), running variance U(0.5, 1.5); bn0, which sees the log-mel in dB, mean
-40 + N(0, 5^2) and variance U(50, 100). The reference forward() runs in eval mode, in float64, on
two 1 s clips (numpy seed 82, stored as float32): 440 Hz and 1510 Hz tones plus noise, and noise
for 0.5 s then silence (log-mel floor -100 dB). It stores the state dict (STFT and mel buffers
included; float32), the inputs, log-mel (a hook on logmel_extractor), embedding, logits (a hook
on fc_audioset) and clip-wise output, and the full-size 32 kHz model's state-dict shapes.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from axturbo.convert.common import ConversionError
from axturbo.eval import cnn14, cnn14_weights
from tests import optional
from tests.fixture_io import load_fixture, rel_err


@pytest.fixture(scope='module')
def small():
  sd, inputs, outputs, meta = load_fixture('cnn14_small')
  cfg = dict(meta['config'])
  model = cnn14.Cnn14(sample_rate=cfg['sample_rate'], window_size=cfg['window_size'],
                      hop_size=cfg['hop_size'], mel_bins=cfg['mel_bins'], fmin=cfg['fmin'],
                      fmax=cfg['fmax'], num_classes=cfg['classes_num'],
                      channels=tuple(meta['channels']), embed_dim=meta['embed_dim'])
  return model, sd, inputs, outputs, meta


def test_log_mel_matches_reference(small):
  model, _, inputs, outputs, _ = small
  got = cnn14.log_mel(jnp.asarray(inputs['audio']), model.sample_rate, model.window_size,
                      model.hop_size, model.mel_bins, model.fmin, model.fmax)
  assert got.shape == outputs['logmel'].shape == (2, 101, 64)
  assert rel_err(got, outputs['logmel']) < 1e-4


def test_forward_matches_reference(small):
  model, sd, inputs, outputs, _ = small
  params = cnn14_weights.cnn14_params_from_state_dict(sd, model, 'cnn14_small.npz')
  embedding, logits = jax.jit(model.apply)({'params': params}, jnp.asarray(inputs['audio']))
  assert embedding.shape == (2, 64) and logits.shape == (2, 527)
  assert rel_err(embedding, outputs['embedding']) < 1e-4
  assert rel_err(logits, outputs['logits']) < 1e-4
  np.testing.assert_allclose(jax.nn.sigmoid(logits), outputs['clipwise_output'], atol=1e-5)


def test_params_tree_matches_init_and_is_logically_named(small):
  model, sd, _, _, _ = small
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8000)))['params']
  params = cnn14_weights.cnn14_params_from_state_dict(sd, model)
  assert (jax.tree.map(lambda x: x.shape, params)
          == jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract)))
  boxes = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxes and all(isinstance(b, nn.Partitioned) and len(b.names) == b.value.ndim
                       for b in boxes)


def test_full_size_shapes_match_published_checkpoint(small):
  # The reference's 32 kHz state dict: the converter must ask for exactly these tensors.
  _, _, _, _, meta = small
  shapes = {k: tuple(v) for k, v in meta['full_state_dict_shapes'].items()}
  fake = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  model = cnn14.build_cnn14('32k')
  # Zero front-end buffers are refused (they must equal the config's kernels) ...
  with pytest.raises(ConversionError, match='conv_real'):
    cnn14_weights.cnn14_params_from_state_dict(fake, model)
  # ... and dropping them leaves a state dict whose every tensor is consumed with its shape.
  for key in (cnn14_weights.STFT_REAL, cnn14_weights.STFT_IMAG, cnn14_weights.MEL):
    del fake[key]
  params = cnn14_weights.cnn14_params_from_state_dict(fake, model)
  n = sum(x.size for x in jax.tree.leaves(params))
  bn_running = sum(s[0] for k, s in shapes.items() if k.endswith(('running_mean', 'running_var')))
  assert n - bn_running == meta['full_num_params'] == 80_753_615


def _numpy_log_mel(audio, sr, n_fft, hop, fmin, fmax):
  """Independent reference: reflect pad, periodic Hann, np.fft.rfft, librosa's mel filters."""
  x = np.pad(audio.astype(np.float64), n_fft // 2, mode='reflect')
  frames = np.stack([x[i:i + n_fft] for i in range(0, len(x) - n_fft + 1, hop)])
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
  mel = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=64, fmin=fmin, fmax=fmax)
  return 10 * np.log10(np.maximum(power @ mel.T, 1e-10)), mel.T


def test_published_front_ends_match_numpy_and_librosa_filters():
  rng = np.random.default_rng(0)
  for variant, preset in (('32k', cnn14.CNN14_32K), ('16k', cnn14.CNN14_16K)):
    sr, n_fft, hop = preset['sample_rate'], preset['window_size'], preset['hop_size']
    audio = (0.3 * rng.standard_normal(sr // 4)).astype(np.float32)
    ref, mel = _numpy_log_mel(audio, sr, n_fft, hop, preset['fmin'], preset['fmax'])
    got = jax.jit(cnn14.log_mel, static_argnums=range(1, 7))(
        jnp.asarray(audio[None]), sr, n_fft, hop, 64, preset['fmin'], preset['fmax'])[0]
    assert got.shape == ref.shape == (1 + len(audio) // hop, 64)
    assert rel_err(got, ref) < 1e-4, variant
    np.testing.assert_allclose(cnn14.mel_filterbank(sr, n_fft, 64, preset['fmin'],
                                                    preset['fmax']), mel, rtol=1e-5, atol=1e-9)


def test_loader_errors(small, tmp_path):
  model, sd, _, _, _ = small
  with pytest.raises(ConversionError, match='no such file.*Cnn14_mAP=0.431.pth'):
    cnn14_weights.load_cnn14(tmp_path / 'Cnn14_mAP=0.431.pth')
  # A checkpoint for another front end (here: another sample rate) is refused by name.
  wrong_rate = model.clone(sample_rate=16000, fmax=3500.0)
  with pytest.raises(ConversionError, match='melW'):
    cnn14_weights.cnn14_params_from_state_dict(sd, wrong_rate)
  with pytest.raises(ConversionError, match="missing tensor 'fc1.bias'"):
    cnn14_weights.cnn14_params_from_state_dict(
        {k: v for k, v in sd.items() if k != 'fc1.bias'}, model)
  with pytest.raises(ConversionError, match='neither mapped'):
    cnn14_weights.cnn14_params_from_state_dict({**sd, 'extra.weight': np.zeros(3)}, model)


def test_loads_weights_only_pth_file(small, tmp_path):
  torch = optional.torch()
  model, sd, _, _, meta = small
  path = tmp_path / 'cnn14_small.pth'
  torch.save({'model': {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
              'iteration': 0}, path)
  cfg = meta['config']
  loaded, params = cnn14_weights.load_cnn14(
      path, '16k', sample_rate=cfg['sample_rate'], window_size=cfg['window_size'],
      hop_size=cfg['hop_size'], fmax=cfg['fmax'], channels=model.channels,
      embed_dim=model.embed_dim)
  assert loaded == model
  expected = cnn14_weights.cnn14_params_from_state_dict(sd, model)
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_prepare_audio_resamples_and_downmixes():
  t = np.arange(44100) / 44100
  tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
  stereo = np.stack([tone, tone], -1)[None]
  out = cnn14.prepare_audio(stereo, 44100, 32000)
  assert out.shape == (1, 32000)
  ref = np.sin(2 * np.pi * 1000 * np.arange(32000) / 32000)
  assert np.max(np.abs(out[0, 1000:-1000] - ref[1000:-1000])) < 1e-3

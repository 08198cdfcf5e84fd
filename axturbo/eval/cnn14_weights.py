"""PANNs CNN14 checkpoint (`Cnn14_mAP=0.431.pth`, `Cnn14_16k_mAP=0.438.pth`) -> Flax params.

The checkpoints are PyTorch pickles {'model': state_dict, ...}; they are read with torch's
weights-only unpickler (`axturbo.convert.torch_io`), never executing code from the file, and
only from a local path (download them yourself from the PANNs release on Zenodo, record
3987831 / 3576403). Every tensor is consumed or documented as unused; shapes are checked
against the model's config. The front-end buffers (STFT kernels, mel filterbank) are not
loaded: the model recomputes them from its config, and they are checked to agree with the
file so that a checkpoint trained for another sample rate or FFT size is refused.
"""
import pathlib

import numpy as np

from axturbo.convert import common, torch_io
from axturbo.eval import cnn14

STFT_REAL = 'spectrogram_extractor.stft.conv_real.weight'
STFT_IMAG = 'spectrogram_extractor.stft.conv_imag.weight'
MEL = 'logmel_extractor.melW'
FRONT_END_RTOL = 1e-4  # float32 copies of float64 constants, relative to the largest entry


def _bn(sd: common.StateDict, key: str, c: int) -> dict:
  sd.skip(f'{key}.num_batches_tracked')
  return {'scale': sd.take(f'{key}.weight', (c,)), 'bias': sd.take(f'{key}.bias', (c,)),
          'mean': sd.take(f'{key}.running_mean', (c,)), 'var': sd.take(f'{key}.running_var', (c,))}


def _conv3x3(sd: common.StateDict, key: str, c_in: int, c_out: int) -> dict:
  """torch (out, in, kh, kw) over (time, mel) -> Flax (kh, kw, in, out)."""
  return {'kernel': np.transpose(sd.take(f'{key}.weight', (c_out, c_in, 3, 3)), (2, 3, 1, 0))}


def _check_front_end(sd: common.StateDict, model: cnn14.Cnn14) -> None:
  real, imag = cnn14.stft_kernels(model.window_size)
  mel = cnn14.mel_filterbank(model.sample_rate, model.window_size, model.mel_bins, model.fmin,
                             model.fmax)
  bins = model.window_size // 2 + 1
  expected = {STFT_REAL: (real.T[:, None, :], (bins, 1, model.window_size)),
              STFT_IMAG: (imag.T[:, None, :], (bins, 1, model.window_size)),
              MEL: (mel, (bins, model.mel_bins))}
  for key, (ours, shape) in expected.items():
    if not sd.has(key):
      continue  # the front end is fully determined by the config; the buffers are optional
    stored = sd.take(key, shape)
    err = np.max(np.abs(stored - ours)) / np.max(np.abs(ours))
    if err > FRONT_END_RTOL:
      raise common.ConversionError(
          f'{sd.source}: {key!r} differs from the front end of the requested config '
          f'(sample_rate={model.sample_rate}, window_size={model.window_size}, '
          f'mel_bins={model.mel_bins}, fmin={model.fmin}, fmax={model.fmax}) by {err:.2e} '
          '(relative); is this checkpoint for another variant (32k vs 16k)?')


def cnn14_params_from_state_dict(state: dict, model: cnn14.Cnn14,
                                 source: str = '<state dict>') -> dict:
  """{torch key: array} (the checkpoint's 'model' dict) -> Flax params of `model`."""
  sd = common.StateDict(state, source)
  _check_front_end(sd, model)
  params = {'bn0': _bn(sd, 'bn0', model.mel_bins)}
  c_in = 1
  for i, c in enumerate(model.channels):
    key = f'conv_block{i + 1}'
    params[key] = {'conv1': _conv3x3(sd, f'{key}.conv1', c_in, c),
                   'conv2': _conv3x3(sd, f'{key}.conv2', c, c),
                   'bn1': _bn(sd, f'{key}.bn1', c), 'bn2': _bn(sd, f'{key}.bn2', c)}
    c_in = c
  params['fc1'] = common.linear(sd, 'fc1', c_in, model.embed_dim)
  params['fc_audioset'] = common.linear(sd, 'fc_audioset', model.embed_dim, model.num_classes)
  common.reject_leftovers(sd)
  return params


def load_cnn14(path: str | pathlib.Path, variant: str = '32k', **overrides
               ) -> tuple[cnn14.Cnn14, dict]:
  """Reads a local PANNs checkpoint. Returns (model, params) for `model.apply({'params': p}, x)`.

  Raises ConversionError naming the file if it is missing, not a weights-only pickle, or does
  not match the `variant` config.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise common.ConversionError(
        f'{path}: no such file. The PANNs CNN14 checkpoint is not downloaded at run time; fetch '
        'Cnn14_mAP=0.431.pth (32 kHz) or Cnn14_16k_mAP=0.438.pth (16 kHz) from the PANNs '
        'release (zenodo.org/record/3987831) and pass its local path.')
  model = cnn14.build_cnn14(variant, **overrides)
  return model, cnn14_params_from_state_dict(torch_io.load_state_dict(path), model, str(path))

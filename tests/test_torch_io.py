"""Checkpoint reading: weights-only loading, key normalization, clear errors."""
import pickle
import zipfile

import numpy as np
import pytest

from axturbo.convert import torch_io
from axturbo.convert.common import ConversionError
from tests import optional

torch = optional.torch()


class _Payload:
  """Unpickling this calls `open(marker, 'w')`: a stand-in for arbitrary code in a checkpoint."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (str(self.marker), 'w'))


def test_pickle_with_code_payload_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.ckpt'
  torch.save({'state_dict': {'model.model.x': torch.ones(2)}, 'evil': _Payload(marker)}, path)
  # Sanity: a plain unpickler would run the payload.
  with zipfile.ZipFile(path) as z:
    data = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
  assert b'open' in data
  with pytest.raises(ConversionError, match='refused to load'):
    torch_io.load_state_dict(path)
  assert not marker.exists()


def test_plain_pickle_payload_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pt'
  with open(path, 'wb') as f:
    pickle.dump(_Payload(marker), f)
  with pytest.raises(ConversionError, match='evil.pt'):
    torch_io.load_state_dict(path)
  assert not marker.exists()


def test_ckpt_container_and_prefixes(tmp_path):
  sd = {'student.model.model.a': torch.arange(6, dtype=torch.float16).reshape(2, 3),
        'module.maf_block.b': torch.ones(3, dtype=torch.bfloat16),
        'model.conditioner.conditioners.video_prompt.c': torch.zeros(1)}
  path = tmp_path / 'x.ckpt'
  torch.save({'state_dict': sd, 'epoch': 3}, path)
  raw = torch_io.load_state_dict(path)
  assert set(raw) == set(sd)
  out = torch_io.canonicalize(raw, str(path))
  assert set(out) == {'model.model.a', 'maf_block.b', 'conditioner.conditioners.video_prompt.c'}
  np.testing.assert_array_equal(out['model.model.a'], np.arange(6).reshape(2, 3))
  assert out['maf_block.b'].dtype == np.float32


def test_safetensors_round_trip(tmp_path):
  from safetensors.numpy import save_file
  arrays = {'pretransform.model.encoder.layers.0.bias': np.random.randn(4).astype(np.float32)}
  path = tmp_path / 'vae.safetensors'
  save_file(arrays, str(path))
  out = torch_io.load_state_dict(path)
  np.testing.assert_array_equal(out['pretransform.model.encoder.layers.0.bias'],
                                arrays['pretransform.model.encoder.layers.0.bias'])


def test_full_distillation_checkpoint_needs_network():
  raw = {'teacher.model.model.a': np.ones(1), 'student.model.model.a': np.zeros(1),
         'fake.model.model.a': np.ones(1) * 2, 'discriminator_heads.0.net.0.bias': np.ones(1)}
  with pytest.raises(ConversionError, match='network'):
    torch_io.canonicalize(raw)
  fake = torch_io.canonicalize(raw, network='fake')
  assert set(fake) == {'model.model.a', 'discriminator_heads.0.net.0.bias'}
  assert fake['model.model.a'][0] == 2
  with pytest.raises(ConversionError, match="'ema'"):
    torch_io.canonicalize(raw, network='ema')


def test_unknown_key_and_bad_files(tmp_path):
  with pytest.raises(ConversionError, match="'optimizer.x'"):
    torch_io.canonicalize({'optimizer.x': np.ones(1)}, 'f.ckpt')
  with pytest.raises(ConversionError, match='no such checkpoint'):
    torch_io.load_state_dict(tmp_path / 'missing.ckpt')
  bad = tmp_path / 'weights.npz'
  bad.write_bytes(b'0')
  with pytest.raises(ConversionError, match='unknown checkpoint extension'):
    torch_io.load_state_dict(bad)
  truncated = tmp_path / 'broken.safetensors'
  truncated.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
  with pytest.raises(ConversionError, match='broken.safetensors'):
    torch_io.load_state_dict(truncated)

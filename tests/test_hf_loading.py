"""Reading local HF model folders: safetensors (incl. bfloat16 and shards), pytorch_model.bin."""
import json
import struct
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from axturbo.convert.hf import load_hf_weights, read_hf_config
from tests import optional


def _write_bf16_safetensors(path, arrays):
  """Hand-written safetensors file with BF16 tensors (NumPy's safetensors API cannot)."""
  header, chunks, offset = {}, [], 0
  for name, value in arrays.items():
    raw = np.asarray(value, ml_dtypes.bfloat16).tobytes()
    header[name] = {'dtype': 'BF16', 'shape': list(value.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  blob = json.dumps(header).encode()
  path.write_bytes(struct.pack('<Q', len(blob)) + blob + b''.join(chunks))


def test_bfloat16_safetensors(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'a.weight': rng.normal(size=(3, 5)).astype(np.float32),
            'b': rng.normal(size=(7,)).astype(np.float32)}
  _write_bf16_safetensors(tmp_path / 'model.safetensors', arrays)
  got = load_hf_weights(tmp_path)
  for k, v in arrays.items():
    want = v.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], want)


def test_sharded_safetensors(tmp_path):
  save_file({'x': np.ones(2, np.float32)}, str(tmp_path / 'model-00001-of-00002.safetensors'))
  save_file({'y': np.zeros(3, np.float32)}, str(tmp_path / 'model-00002-of-00002.safetensors'))
  (tmp_path / 'model.safetensors.index.json').write_text(json.dumps(
      {'weight_map': {'x': 'model-00001-of-00002.safetensors',
                      'y': 'model-00002-of-00002.safetensors'}}))
  got = load_hf_weights(tmp_path)
  assert sorted(got) == ['x', 'y'] and got['y'].shape == (3,)


def test_pytorch_bin(tmp_path):
  torch = optional.torch()
  torch.save({'w': torch.arange(6.0).reshape(2, 3).half(), 'i': torch.arange(3)},
             str(tmp_path / 'pytorch_model.bin'))
  got = load_hf_weights(tmp_path)
  np.testing.assert_array_equal(got['w'], np.arange(6.0, dtype=np.float32).reshape(2, 3))
  assert got['w'].dtype == np.float32 and got['i'].tolist() == [0, 1, 2]


def test_pytorch_bin_without_torch_is_clear(tmp_path, monkeypatch):
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  with pytest.raises(ImportError, match='needs torch'):
    load_hf_weights(tmp_path)


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='pytorch_model.bin'):
    load_hf_weights(tmp_path)
  with pytest.raises(FileNotFoundError, match='config.json'):
    read_hf_config(tmp_path)
  with pytest.raises(FileNotFoundError, match='elsewhere'):
    load_hf_weights(tmp_path / 'elsewhere')


def test_bfloat16_raw_reader(tmp_path):
  """The safetensors parser widens bfloat16 to float32 exactly."""
  from axturbo.convert.torch_io import load_state_dict
  value = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
  _write_bf16_safetensors(tmp_path / 'model.safetensors', {'w': value})
  got = load_state_dict(tmp_path / 'model.safetensors')['w']
  np.testing.assert_array_equal(got, value.astype(ml_dtypes.bfloat16).astype(np.float32))

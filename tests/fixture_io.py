"""Reading the parity fixtures in tests/fixtures/.

A fixture is one compressed .npz with:
  'meta'      a JSON string: the module's config and how the fixture was made,
  'sd/<key>'  PyTorch state-dict tensors under their official names (random weights),
  'in/<name>' inputs, 'out/<name>' the PyTorch module's outputs.
tests/fixtures/README.md names each file's generator: tests/make_hf_fixtures.py (Hugging Face
models) or tests/fixtures/make_official.py (the official PyTorch code, from a local checkout
named by $AXTURBO_OFFICIAL, which is not part of this repository); each test's docstring says
what was run.
"""
import json
import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def load_fixture(name: str) -> tuple[dict, dict, dict, dict]:
  """Returns (state_dict, inputs, outputs, meta) of tests/fixtures/<name>.npz."""
  with np.load(FIXTURES / f'{name}.npz', allow_pickle=False) as f:
    meta = json.loads(str(f['meta']))
    groups = {'sd': {}, 'in': {}, 'out': {}}
    for key in f.files:
      if key == 'meta':
        continue
      group, rest = key.split('/', 1)
      groups[group][rest] = f[key]
  return groups['sd'], groups['in'], groups['out'], meta


def save_fixture(name: str, state_dict: dict, inputs: dict, outputs: dict, meta: dict,
                 folder: pathlib.Path = FIXTURES) -> None:
  """Writes <folder>/<name>.npz (float64 is stored as float32)."""
  arrays = {'meta': np.array(json.dumps(meta))}
  for group, d in (('sd', state_dict), ('in', inputs), ('out', outputs)):
    for k, v in d.items():
      v = np.asarray(v)
      arrays[f'{group}/{k}'] = v.astype(np.float32) if v.dtype == np.float64 else v
  np.savez_compressed(pathlib.Path(folder) / f'{name}.npz', **arrays)


def rel_err(a, b) -> float:
  """max|a - b| / max|b|: the relative error the parity tests bound."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def write_hf_folder(path: pathlib.Path, state_dict: dict, config: dict) -> pathlib.Path:
  """Writes a Hugging Face style model folder: config.json + model.safetensors."""
  from safetensors.numpy import save_file
  path.mkdir(parents=True, exist_ok=True)
  (path / 'config.json').write_text(json.dumps(config))
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()},
            str(path / 'model.safetensors'))
  return path

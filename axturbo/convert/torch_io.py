"""Reading official checkpoints as NumPy arrays, without ever running code from the file.

`.safetensors` files are read with the safetensors NumPy reader. PyTorch pickles (`.ckpt`, `.pt`,
`.pth`, `.bin`) are read with torch's weights-only unpickler, which refuses any object other than
tensors and plain containers; torch is an optional dependency needed only for these files.
"""
import json
import pathlib
import struct
from typing import Mapping

import numpy as np

from axturbo.convert.common import ConversionError

# Top-level prefixes of the canonical official names (docs/official.md, "Networks and weights").
CANONICAL_PREFIXES = ('model.model.', 'maf_block.', 'conditioner.conditioners.',
                      'pretransform.model.', 'discriminator_heads.')
# Prefixes the official loader strips (inference/__init__.py), tried in this order.
STRIPPABLE_PREFIXES = ('module.', 'student.model.', 'student.', 'model.')
# Containers the official loader unwraps before reading tensors.
CONTAINER_KEYS = ('state_dict', 'model', 'student', 'student_state_dict')
PICKLE_SUFFIXES = ('.ckpt', '.pt', '.pth', '.bin')


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Reading PyTorch pickle checkpoints (.ckpt/.pt/.pth/.bin) needs torch: '
                      '`pip install torch` (the CPU build is enough), or convert the file to '
                      '.safetensors first.') from e
  return torch


def _to_numpy(value) -> np.ndarray:
  """torch tensor -> NumPy; floating tensors become float32 (NumPy has no bfloat16)."""
  if isinstance(value, np.ndarray):
    return value
  value = value.detach().cpu()
  return value.float().numpy() if value.is_floating_point() else value.numpy()


def _load_pickle(path: pathlib.Path) -> Mapping:
  torch = _torch()
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # the weights-only unpickler raises UnpicklingError/RuntimeError
    raise ConversionError(f'{path}: refused to load: the file is not a plain weights checkpoint '
                          f'(torch weights-only unpickler said: {str(e).splitlines()[0]})') from e
  return obj


_SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                      'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8,
                      'U8': np.uint8, 'BOOL': np.bool_}


def _safetensors_header(path: pathlib.Path, blob: bytes) -> tuple[dict, int]:
  """(JSON header, offset of the data), validated so that parsing fails only with a
  ConversionError: an 8-byte little-endian length, then that many bytes of a JSON object."""
  size = len(blob)
  if size < 8:
    raise ConversionError(f'{path}: not a valid safetensors file (only {size} bytes)')
  length = struct.unpack('<Q', blob[:8])[0]
  # Random bytes give a length of up to 2**64: check it before reading, or the read overflows.
  if length > size - 8:
    raise ConversionError(f'{path}: not a valid safetensors file (its header length {length} '
                          f'exceeds the file size {size})')
  try:
    header = json.loads(blob[8:8 + length])
  except (ValueError, UnicodeDecodeError) as e:
    raise ConversionError(f'{path}: not a valid safetensors file (header is not JSON: '
                          f'{str(e).splitlines()[0]})') from e
  if not isinstance(header, dict):
    raise ConversionError(f'{path}: not a valid safetensors file (header is not a JSON object)')
  return header, 8 + length


def _safetensors_array(path: pathlib.Path, name: str, info, data: memoryview) -> np.ndarray:
  """One tensor from its header entry {dtype, shape, data_offsets}; bfloat16 -> float32."""
  try:
    dtype, (start, end) = info['dtype'], (int(o) for o in info['data_offsets'])
    shape = tuple(int(n) for n in info['shape'])
    count = int(np.prod(shape, dtype=np.int64))
  except (KeyError, TypeError, ValueError) as e:
    raise ConversionError(f'{path}: tensor {name!r} has a malformed header entry') from e
  if not 0 <= start <= end <= len(data):
    raise ConversionError(f'{path}: truncated: tensor {name!r} ends past the end of the file')
  if dtype == 'BF16':
    np_dtype = np.dtype('<u2')
  elif dtype in _SAFETENSORS_DTYPES:
    np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder('<')
  else:
    raise ConversionError(f'{path}: tensor {name!r} has unsupported dtype {dtype}')
  if end - start != count * np_dtype.itemsize:
    raise ConversionError(f'{path}: tensor {name!r} holds {end - start} bytes, but {dtype} '
                          f'{shape} needs {count * np_dtype.itemsize}')
  arr = np.frombuffer(data[start:end], np_dtype)
  if dtype == 'BF16':
    arr = (arr.astype(np.uint32) << 16).view(np.float32)
  return arr.reshape(shape)


def _load_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Parses a .safetensors file (JSON header + raw little-endian data); bfloat16 -> float32.

  Parsed by hand because NumPy has no bfloat16; the format holds no code, only arrays. Any
  malformed file (random bytes included) is a one-line ConversionError naming it.
  """
  with open(path, 'rb') as f:
    blob = f.read()
  header, offset = _safetensors_header(path, blob)
  data = memoryview(blob)[offset:]  # a view: no second copy of a multi-GB file
  return {name: _safetensors_array(path, name, info, data)
          for name, info in header.items() if name != '__metadata__'}


def _unwrap(obj, path: pathlib.Path) -> Mapping:
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: expected a dict of tensors, found {type(obj).__name__}')
  for key in CONTAINER_KEYS:
    if key in obj and isinstance(obj[key], Mapping):
      return obj[key]
  return obj


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into {torch key: np.ndarray}, keys as stored in the file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f'{path}: no such checkpoint file')
  if path.suffix == '.safetensors':
    return _load_safetensors(path)
  if path.suffix not in PICKLE_SUFFIXES:
    raise ConversionError(f'{path}: unknown checkpoint extension {path.suffix!r}; expected '
                          f'.safetensors or one of {PICKLE_SUFFIXES}')
  state = _unwrap(_load_pickle(path), path)
  out = {}
  for k, v in state.items():
    if hasattr(v, 'detach') or isinstance(v, np.ndarray):
      out[k] = _to_numpy(v)
  if not out:
    raise ConversionError(f'{path}: contains no tensors')
  return out


def canonical_key(key: str) -> str | None:
  """Maps a stored key to its canonical official name, or None if it is not one of ours.

  Mirrors the official loader: the key as is, else with `module.`, `student.model.`,
  `student.` or `model.` stripped (repeatedly), whichever first gives a canonical name.
  """
  candidates = [key]
  while candidates:
    k = candidates.pop(0)
    if k.startswith(CANONICAL_PREFIXES):
      return k
    candidates.extend(k[len(p):] for p in STRIPPABLE_PREFIXES if k.startswith(p))
  return None


def canonicalize(state: Mapping[str, np.ndarray], source: str = '<state dict>',
                 network: str | None = None) -> dict[str, np.ndarray]:
  """Normalizes key prefixes. `network` ('teacher'/'fake'/'student') selects one network of a
  full distillation checkpoint, whose keys are `teacher.*`, `fake.*` and `student.*`."""
  if network is not None:
    prefix = network + '.'
    if not any(k.startswith(prefix) for k in state):
      raise ConversionError(f'{source}: no tensors of network {network!r} (keys {prefix}*)')
    state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()
             if k.startswith((prefix, 'discriminator_heads.'))}
  elif any(k.startswith(('teacher.', 'fake.')) for k in state):
    raise ConversionError(f'{source}: this is a full distillation checkpoint holding several '
                          "networks; pass network='student', 'teacher' or 'fake'")
  out = {}
  for k, v in state.items():
    name = canonical_key(k)
    if name is None:
      raise ConversionError(f'{source}: tensor {k!r} is not part of the AudioX architecture')
    if name in out:
      raise ConversionError(f'{source}: tensors {k!r} and another key both map to {name!r}')
    out[name] = v
  return out

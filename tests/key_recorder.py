"""A stand-in for `StateDict` that records which keys (and shapes) a mapping function asks for.

Lets a test check a full-size mapping function against the official key list without
materializing any full-size tensor.
"""
import pathlib

import numpy as np

OFFICIAL_KEYS = pathlib.Path(__file__).parent / 'fixtures' / 'official_state_dict_keys.tsv'


class KeyRecorder:
  """Records `take`n keys with their expected shapes and `skip`ped keys; returns tiny arrays."""

  def __init__(self, prefix: str = '', taken=None, skipped=None):
    self.prefix = prefix
    self.taken = {} if taken is None else taken
    self.skipped = set() if skipped is None else skipped

  def scope(self, prefix: str) -> 'KeyRecorder':
    return KeyRecorder(self.prefix + prefix, self.taken, self.skipped)

  def take(self, key: str, shape) -> np.ndarray:
    self.taken[self.prefix + key] = tuple(shape)
    return np.ones((1,) * len(tuple(shape)), np.float32)

  def skip(self, key: str) -> None:
    self.skipped.add(self.prefix + key)


def official_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
  """{key without prefix: shape} for the official tensors under `prefix` (shared docs TSV)."""
  out = {}
  for line in OFFICIAL_KEYS.read_text().splitlines():
    key, shape = line.split('\t')[:2]
    if key.startswith(prefix):
      out[key[len(prefix):]] = tuple(int(d) for d in shape.strip('()').split(',') if d.strip())
  return out

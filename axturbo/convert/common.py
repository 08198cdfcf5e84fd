"""Reading a PyTorch state dict (as NumPy arrays) into Flax parameter trees, strictly.

Every mapping function takes a `StateDict` view, calls `take(key, shape)` for each tensor it
consumes and returns a nested dict of NumPy arrays in the Flax layout. The top-level converter
then checks that every tensor was taken or is on a documented list of unused tensors, so nothing
is silently dropped and nothing is silently left at its random initialization.
"""
from typing import Iterable, Mapping

import numpy as np


class ConversionError(ValueError):
  """A checkpoint does not match the architecture; the message names the file and the key."""


class StateDict:
  """A read-once view of `arrays` (torch key -> np.ndarray) under a key prefix.

  Views made by `scope` share the record of taken keys with their parent.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], source: str = '<state dict>',
               prefix: str = '', _taken: set[str] | None = None):
    self.arrays = arrays
    self.source = source
    self.prefix = prefix
    self.taken = set() if _taken is None else _taken

  def scope(self, prefix: str) -> 'StateDict':
    return StateDict(self.arrays, self.source, self.prefix + prefix, self.taken)

  def has(self, key: str) -> bool:
    return self.prefix + key in self.arrays

  def take(self, key: str, shape: Iterable[int] | None = None) -> np.ndarray:
    """Returns the float32 array for `prefix + key`, checking its shape if given."""
    full = self.prefix + key
    if full not in self.arrays:
      raise ConversionError(f'{self.source}: missing tensor {full!r}'
                            + (f' (expected shape {tuple(shape)})' if shape is not None else ''))
    value = np.asarray(self.arrays[full])
    if shape is not None and tuple(value.shape) != tuple(shape):
      raise ConversionError(f'{self.source}: tensor {full!r} has shape {tuple(value.shape)}, '
                            f'expected {tuple(shape)}')
    self.taken.add(full)
    return value.astype(np.float32)

  def skip(self, key: str) -> None:
    """Marks a tensor as deliberately unused (a documented dead weight)."""
    full = self.prefix + key
    if full in self.arrays:
      self.taken.add(full)

  def untaken(self) -> list[str]:
    return sorted(k for k in self.arrays if k.startswith(self.prefix) and k not in self.taken)


def reject_leftovers(sd: StateDict, allowed_prefixes: tuple[str, ...] = ()) -> None:
  """Raises if a tensor under `sd`'s prefix was neither taken nor skipped (nor allowed)."""
  left = [k for k in sd.untaken() if not (allowed_prefixes and k.startswith(allowed_prefixes))]
  if left:
    raise ConversionError(f'{sd.source}: {len(left)} tensors are neither mapped nor documented '
                          f'as unused, e.g. {left[:8]}')


def linear(sd: StateDict, key: str, in_features: int, out_features: int,
           bias: bool = True) -> dict:
  """torch Linear (out, in) -> Flax Dense {'kernel': (in, out), 'bias': (out,)}."""
  out = {'kernel': sd.take(f'{key}.weight', (out_features, in_features)).T}
  if bias:
    out['bias'] = sd.take(f'{key}.bias', (out_features,))
  return out


def conv1d(sd: StateDict, key: str, in_channels: int, out_channels: int, kernel_size: int,
           bias: bool = True) -> dict:
  """torch Conv1d (out, in, k) -> Flax Conv {'kernel': (k, in, out), 'bias': (out,)}."""
  w = sd.take(f'{key}.weight', (out_channels, in_channels, kernel_size))
  out = {'kernel': np.transpose(w, (2, 1, 0))}
  if bias:
    out['bias'] = sd.take(f'{key}.bias', (out_channels,))
  return out


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Old-style torch weight norm (dim=0): W = g * v / ||v||, norm over all axes but axis 0."""
  axes = tuple(range(1, v.ndim))
  norm = np.sqrt(np.sum(np.square(v.astype(np.float64)), axis=axes, keepdims=True))
  return (g.astype(np.float64) * v / norm).astype(np.float32)


def layer_norm(sd: StateDict, key: str, features: int) -> dict:
  """torch LayerNorm -> Flax LayerNorm {'scale', 'bias'}."""
  return {'scale': sd.take(f'{key}.weight', (features,)),
          'bias': sd.take(f'{key}.bias', (features,))}


def stack_layers(layers: list[dict]) -> dict:
  """Stacks per-layer trees along a new leading axis (the `nn.scan` layout)."""
  import jax  # local: keeps this module importable without initializing JAX
  return jax.tree.map(lambda *xs: np.stack(xs, axis=0), *layers)

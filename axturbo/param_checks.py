"""Hard checks on parameter trees (the official distillation swallows a failed teacher load and
`copy_state_dict` skips mismatched keys silently: dmd_notes.md §5.1.9)."""
from typing import Any

import flax.linen as nn
import jax
import numpy as np


class TreeMismatchError(ValueError):
  """Two parameter trees that must be identical are not."""


def _flat(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(tree))[0]
  return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def assert_same_tree(a: Any, b: Any, what: str = 'trees', values: bool = True) -> None:
  """Raises TreeMismatchError naming the first differing path: missing/extra keys, shape, dtype
  or (if `values`) any element that is not bit-identical. Boxed (logically named) params are
  compared by value."""
  fa, fb = _flat(a), _flat(b)
  if fa.keys() != fb.keys():
    only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())
    raise TreeMismatchError(f'{what}: different keys; only in the first: {only_a[:5]}'
                            f'{"..." if len(only_a) > 5 else ""}; only in the second: '
                            f'{only_b[:5]}{"..." if len(only_b) > 5 else ""}')
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    if x.shape != y.shape or x.dtype != y.dtype:
      raise TreeMismatchError(f'{what}: {k} is {x.dtype}{x.shape} vs {y.dtype}{y.shape}')
    if values and not np.array_equal(x, y, equal_nan=True):
      diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
      raise TreeMismatchError(f'{what}: {k} differs (max abs diff {diff:.3g})')


def assert_distill_init(teacher: Any, student: Any, fake: Any, loaded: Any | None = None) -> None:
  """Distillation starts with teacher == student == fake; with `loaded` (the checkpoint tree as
  read from disk) the teacher must also equal it, so a skipped or failed load fails here."""
  if loaded is not None:
    assert_same_tree(loaded, teacher, 'teacher vs loaded checkpoint')
  assert_same_tree(teacher, student, 'teacher vs student init')
  assert_same_tree(teacher, fake, 'teacher vs fake init')

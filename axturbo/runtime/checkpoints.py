"""Every checkpoint of the project, and the hard checks on parameter trees.

Inference checkpoints (what train.py and distill.py export, `python -m axturbo.convert` writes
and generation loads): a parameter tree (orbax) plus the model config it belongs to (JSON).
  params/             orbax StandardCheckpointer tree {'text', 'clip', 'video', ...}
  model_config.json   the `config.model` section the tree was made for
  meta.json           where it came from (converter inputs, training step, ...)

Training checkpoints (a TrainState or a DistillState: any pytree of arrays): an orbax
CheckpointManager (async, keep-last-N) of the state plus the per-host data-iterator state,
restored straight into the target mesh's shardings.
  <workdir>/checkpoints/<step>/{state/, data/process_<i>-of-<n>.json}
"""
import json
import pathlib
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

PARAMS_DIR = 'params'
CONFIG_FILE = 'model_config.json'
META_FILE = 'meta.json'


def save_params(directory: str | pathlib.Path, params: Any, model_config: mlc.ConfigDict,
                meta: dict | None = None) -> pathlib.Path:
  """Writes params + config; refuses to overwrite an existing checkpoint."""
  directory = pathlib.Path(directory).absolute()
  if (directory / PARAMS_DIR).exists():
    raise FileExistsError(f'{directory}: already holds a checkpoint; choose a new directory')
  directory.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(np.asarray, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / PARAMS_DIR, params)
    ckptr.wait_until_finished()
  (directory / CONFIG_FILE).write_text(model_config.to_json(indent=2))
  (directory / META_FILE).write_text(json.dumps(meta or {}, indent=2, default=str))
  return directory


def load_model_config(directory: str | pathlib.Path) -> mlc.ConfigDict:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{directory}: not an axturbo checkpoint (no {CONFIG_FILE})')
  return mlc.ConfigDict(json.loads(path.read_text()))


def load_params(directory: str | pathlib.Path, target: Any | None = None) -> Any:
  """Restores the parameter tree. `target`: an abstract tree (jax.ShapeDtypeStruct leaves,
  optionally with `.sharding`) to restore straight into those shapes and shardings."""
  path = pathlib.Path(directory).absolute() / PARAMS_DIR
  if not path.is_dir():
    raise FileNotFoundError(f'{directory}: not an axturbo checkpoint (no {PARAMS_DIR}/)')
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, target) if target is not None else ckptr.restore(path)


# ---------------------------------------------------------------------------------------------
# Hard checks on parameter trees (the official distillation swallows a failed teacher load
# and `copy_state_dict` skips mismatched keys silently: docs/official.md, distillation).

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


# ---------------------------------------------------------------------------------------------
# Training checkpoints.

def make_manager(workdir: str | pathlib.Path, t: mlc.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.keep_checkpoints, enable_async_checkpointing=t.async_checkpointing,
      create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / 'checkpoints', options=options,
                               item_names=('state', 'data'))


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def save(mgr: ocp.CheckpointManager, state: Any, data_iter, *, force: bool = False
         ) -> bool:
  """Saves (asynchronously) unless the state holds a non-finite value: a broken state never
  replaces a good checkpoint. Returns whether a save was started."""
  if not bool(all_finite(state)):
    raise FloatingPointError(f'step {int(state.step)}: state holds non-finite values; '
                             'not checkpointing it (the previous checkpoint is kept)')
  step = int(state.step)
  if step in mgr.all_steps():
    return False
  args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                            data=grain.checkpoint.CheckpointSave(data_iter))
  return mgr.save(step, args=args, force=force)


def restore_latest(mgr: ocp.CheckpointManager, abstract: Any, data_iter
                   ) -> Any | None:
  """The latest checkpoint restored into `abstract`'s shapes and shardings (any mesh), with
  `data_iter` moved to where it was; None when there is none."""
  step = mgr.latest_step()
  if step is None:
    return None
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                            data=grain.checkpoint.CheckpointRestore(data_iter))
  return mgr.restore(step, args=args)['state']


def export(directory: str | pathlib.Path, params: Any, model_config: mlc.ConfigDict,
           meta: dict) -> pathlib.Path:
  """Writes the inference checkpoint of a trained parameter tree (a teacher's or a student's).

  Multi-host: every host gathers the tree and calls the (collective) orbax save, which writes
  host-local numpy arrays from the primary host only.
  """
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  return save_params(directory, jax.tree.map(np.asarray, params), model_config, meta)

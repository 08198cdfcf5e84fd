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

Every directory may be a local path or an `etils.epath` URL (gs://bucket/run, s3://...): they
go through `as_path`, never through pathlib or shutil (which turn a URL into a local folder).
"""
import hashlib
import json
import os
import pathlib
from typing import Any, Callable

import flax.linen as nn
import grain
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from axturbo.runtime import checkpoint_fields

PARAMS_DIR = 'params'
CONFIG_FILE = 'model_config.json'
META_FILE = 'meta.json'


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names a location by URL (gs://bucket/x), not a local file."""
  return '://' in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """A local path made absolute (as pathlib's `absolute()`), or a URL kept as it is."""
  if is_url(path):
    return epath.Path(os.fspath(path))
  return epath.Path(pathlib.Path(path).absolute())


def config_hash(model_config: mlc.ConfigDict) -> str:
  """Short stable hash of a model config (recorded in exports; equal configs, equal hash)."""
  text = json.dumps(json.loads(model_config.to_json()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def holds_checkpoint(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds an inference checkpoint, whole or partly written."""
  directory = as_path(directory)
  return (directory / PARAMS_DIR).exists() or (directory / CONFIG_FILE).exists()


def _write_json(path: epath.Path, value: Any) -> None:
  path.write_text(json.dumps(value, indent=2, default=str))


def save_params(directory: str | os.PathLike, params: Any, model_config: mlc.ConfigDict,
                meta: dict | None = None, *, replace: bool = False,
                populate: Callable[[epath.Path], None] | None = None) -> epath.Path:
  """Writes params + config + meta (+ whatever `populate(folder)` adds) as one unit.

  Everything is written into a hidden sibling folder that is renamed into place at the end, so
  a reader (or a run killed half-way) sees the old checkpoint or the new one, never a mix.
  An existing checkpoint is refused unless `replace`; a non-empty folder that holds none is
  always refused (it is not ours to delete).

  `params` may hold host (NumPy) arrays or sharded jax.Arrays; orbax writes each host's own
  shards of the latter, so no host ever holds the whole tree.
  """
  directory = as_path(directory)
  if directory.exists() and not directory.is_dir():
    raise FileExistsError(f'{directory}: exists and is not a directory')
  existing = directory.is_dir() and any(directory.iterdir())
  if existing and not holds_checkpoint(directory):
    raise FileExistsError(f'{directory}: not empty and holds no checkpoint; choose a new '
                          'directory')
  if existing and not replace:
    raise FileExistsError(f'{directory}: already holds a checkpoint; choose a new directory')
  # Every host of a multi-host save must name the same folder: the tag comes from the content.
  tag = hashlib.sha256(json.dumps(meta or {}, sort_keys=True, default=str).encode()
                       ).hexdigest()[:12]
  partial = directory.with_name(f'.{directory.name}.partial-{tag}')
  primary = jax.process_index() == 0
  if primary:
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial.rmtree(missing_ok=True)   # left by a run killed while writing
    partial.mkdir()
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(partial / PARAMS_DIR, params)
      ckptr.wait_until_finished()
    if primary:
      (partial / CONFIG_FILE).write_text(model_config.to_json(indent=2))
      _write_json(partial / META_FILE, meta or {})
      if populate is not None:
        populate(partial)
  except BaseException:
    if primary:
      partial.rmtree(missing_ok=True)
    raise
  if primary:
    _swap_in(partial, directory, tag)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'save_params:{directory}')
  return directory


def _swap_in(partial: epath.Path, directory: epath.Path, tag: str) -> None:
  """Renames `partial` to `directory`, moving an old `directory` aside first and deleting it
  after. The two renames leave a microsecond window without `directory`; a crash inside it is
  repaired by `recover_swap` on the next write or read."""
  old = directory.with_name(f'.{directory.name}.old-{tag}')
  if directory.exists():
    directory.rename(old)
  partial.rename(directory)
  old.rmtree(missing_ok=True)


def recover_swap(directory: str | os.PathLike) -> None:
  """After a crash inside `_swap_in`: put a moved-aside checkpoint back, drop partial writes."""
  directory = as_path(directory)
  if not directory.parent.is_dir():
    return
  olds = sorted(directory.parent.glob(f'.{directory.name}.old-*'))
  if olds and not directory.exists():
    olds.pop().rename(directory)
  for stale in [*olds, *directory.parent.glob(f'.{directory.name}.partial-*')]:
    stale.rmtree(missing_ok=True)


def _read_json_object(path: epath.Path) -> dict:
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  if not isinstance(value, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(value).__name__}')
  return value


def load_model_config(directory: str | os.PathLike) -> mlc.ConfigDict:
  path = as_path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{directory}: not an axturbo checkpoint (no {CONFIG_FILE})')
  config = _read_json_object(path)
  # Checkpoints written before `time_shift` existed were all trained and distilled on the
  # unshifted time axis.
  config.setdefault('time_shift', 1.0)
  checkpoint_fields.check_model_config(config, path)
  return mlc.ConfigDict(config)


def load_meta(directory: str | os.PathLike) -> dict:
  """meta.json of a checkpoint ({} when there is none)."""
  path = as_path(directory) / META_FILE
  if not path.is_file():
    return {}
  meta = _read_json_object(path)
  checkpoint_fields.check_meta(meta, path)
  return meta


def load_params(directory: str | os.PathLike, target: Any | None = None, *,
                partial: bool = False) -> Any:
  """Restores the parameter tree. `target`: an abstract tree (jax.ShapeDtypeStruct leaves,
  optionally with `.sharding`) to restore straight into those shapes and shardings, whatever
  mesh wrote them. Without `target`: host NumPy arrays. `partial`: the checkpoint may hold more
  top-level subtrees than `target` (a converted checkpoint's `synchformer`); only `target`'s
  are read. Anything `target` has must be on disk."""
  path = as_path(directory) / PARAMS_DIR
  if not path.is_dir():
    raise FileNotFoundError(f'{directory}: not an axturbo checkpoint (no {PARAMS_DIR}/)')
  try:
    if partial and target is not None:
      _check_same_subtrees(path, target)
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        args = ocp.checkpoint_utils.construct_restore_args(target)
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(
            item=target, restore_args=args, partial_restore=True))
    if target is None:
      # Sharded exports record the mesh that wrote them; read them as host arrays instead, so
      # that any device count can load them.
      host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _disk_tree(path))
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=host))
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(path, target)
  except (ValueError, KeyError, OSError, TypeError) as e:
    raise ValueError(f'{path}: cannot read the parameter tree ({_first_line(e)})') from None


def _disk_tree(path: epath.Path) -> dict:
  """The parameter tree's structure (ArrayMetadata leaves: shape, dtype), from metadata only."""
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(path).item_metadata if path.is_dir() else None
  if metadata is None:
    raise ValueError(f'{path}: no parameter tree here')
  return metadata.tree


def _check_same_subtrees(path: epath.Path, target: Any) -> None:
  """A partial read may skip whole top-level subtrees, never part of one: a checkpoint of a
  deeper model must not load as its first layers."""
  on_disk = _disk_tree(path)
  for name in target:
    if name not in on_disk:
      raise ValueError(f'{path}: no {name!r} subtree')
    have, want = _flat(on_disk[name]).keys(), _flat(target[name]).keys()
    if have != want:
      extra, missing = sorted(have - want)[:3], sorted(want - have)[:3]
      raise ValueError(f'{path}: {name!r} does not match the model (only on disk: {extra}; '
                       f'only in the model: {missing})')


def subtree_names(directory: str | os.PathLike) -> set[str]:
  """Top-level keys of a checkpoint's parameter tree, read from its metadata only."""
  return set(_disk_tree(as_path(directory) / PARAMS_DIR))


def load_subtrees(directory: str | os.PathLike, names) -> dict:
  """{name: host numpy subtree} for the top-level `names` of a checkpoint, reading only those
  (carries a teacher's frozen extras, e.g. `synchformer`, into an export)."""
  names = sorted(names)
  if not names:
    return {}
  tree = _disk_tree(as_path(directory) / PARAMS_DIR)
  target = {k: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[k]) for k in names}
  return load_params(directory, target, partial=True)


def with_extras(params: dict, source: str | os.PathLike | None) -> dict:
  """`params` plus the top-level subtrees that checkpoint `source` holds and `params` lacks
  (frozen extras a model does not train with, e.g. `synchformer`), so an export keeps them."""
  if not source:
    return params
  return {**params, **load_subtrees(source, subtree_names(source) - set(params))}


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


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

def make_manager(workdir: str | os.PathLike, t: mlc.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.keep_checkpoints, enable_async_checkpointing=t.async_checkpointing,
      create=True)
  return ocp.CheckpointManager(as_path(workdir) / 'checkpoints', options=options,
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
  """The latest readable checkpoint restored into `abstract`'s shapes and shardings (any mesh),
  with `data_iter` moved to where it was; None when there is none.

  A checkpoint that cannot be read (a truncated or corrupted file) is skipped with a warning
  naming it and the one used instead; if none can be read, a one-line error names them all.
  """
  steps = sorted(mgr.all_steps(), reverse=True)
  if not steps:
    return None
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                            data=grain.checkpoint.CheckpointRestore(data_iter))
  failed = []
  for step in steps:
    try:
      state = mgr.restore(step, args=args)['state']
    except Exception as e:  # orbax/tensorstore raise many types for a damaged file
      failed.append(step)
      logging.warning('checkpoint %s unreadable (%s)', mgr.directory / str(step), _first_line(e))
      continue
    if failed:
      # Moved aside (kept for inspection), so that this run can save those steps again.
      aside = [mgr.directory / f'unreadable.{f}' for f in failed]
      if jax.process_index() == 0:
        for f, dst in zip(failed, aside):
          (mgr.directory / str(f)).rename(dst)
      mgr.reload()
      logging.warning('checkpoint(s) %s unreadable (moved to %s); resumed from the previous '
                      'one, %s', ', '.join(str(mgr.directory / str(f)) for f in failed),
                      ', '.join(map(str, aside)), mgr.directory / str(step))
    # Multi-host: tells JAX's preemption sync that the run stands at `step`, so that a notice
    # during the compile still picks a step boundary ahead (runtime/preemption.py).
    mgr.reached_preemption(step)
    return state
  raise ValueError(f'{mgr.directory}: no readable checkpoint (tried steps '
                   f'{", ".join(map(str, failed))}; see the log); move them aside to start over')


def export(directory: str | os.PathLike, params: Any, model_config: mlc.ConfigDict,
           meta: dict) -> epath.Path:
  """Writes (or replaces) the inference checkpoint of a trained parameter tree.

  `meta` must hold 'kind' ('teacher' or 'student') and 'step'; the model config's hash is
  added. Multi-host: every host calls this (orbax's save is collective) and writes the shards
  its devices hold; nothing is gathered, so host memory does not grow with the model. The
  export restores onto any mesh (`load_params`).
  """
  missing = {'kind', 'step'} - set(meta)
  if missing:
    raise ValueError(f'export meta needs {sorted(missing)}')
  meta = {**meta, 'config_hash': config_hash(model_config)}
  return save_params(directory, params, model_config, meta, replace=True)


def export_is_current(directory: str | os.PathLike, model_config: mlc.ConfigDict,
                      step: int) -> bool:
  """Whether `directory` holds a whole, readable export of this model config at `step`."""
  directory = as_path(directory)
  recover_swap(directory)
  try:
    meta = load_meta(directory)
    load_model_config(directory)
  except (ValueError, FileNotFoundError):
    return False
  return ((directory / PARAMS_DIR).is_dir() and meta.get('step') == step
          and meta.get('config_hash') == config_hash(model_config))

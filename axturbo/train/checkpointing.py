"""Training checkpoints: orbax CheckpointManager (async, keep-last-N) of the TrainState plus the
per-host data-iterator state, restored straight into the target mesh's shardings.

Layout: <workdir>/checkpoints/<step>/{state/, data/process_<i>-of-<n>.json}
"""
import pathlib
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from axturbo import checkpoints
from axturbo.train import optim
from axturbo.train.state import TrainState


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


def save(mgr: ocp.CheckpointManager, state: TrainState, data_iter, *, force: bool = False
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


def restore_latest(mgr: ocp.CheckpointManager, abstract: TrainState, data_iter
                   ) -> TrainState | None:
  """The latest checkpoint restored into `abstract`'s shapes and shardings (any mesh), with
  `data_iter` moved to where it was; None when there is none."""
  step = mgr.latest_step()
  if step is None:
    return None
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                            data=grain.checkpoint.CheckpointRestore(data_iter))
  return mgr.restore(step, args=args)['state']


def inference_params(state: TrainState, t: mlc.ConfigDict, use_ema: bool = True) -> Any:
  """The full AudioX tree with the EMA subtree (if any) in place of the online weights."""
  if not (use_ema and t.ema.enabled):
    return state.params
  _, rest = optim.split_params(state.params, t.ema.subtrees, 'train.ema.subtrees')
  return optim.merge_params(rest, state.ema)


def export(directory: str | pathlib.Path, state: TrainState, config: mlc.ConfigDict,
           use_ema: bool = True) -> pathlib.Path:
  """Writes an inference checkpoint (axturbo.checkpoints) of the EMA-merged parameters.

  Multi-host: every host gathers the tree and calls the (collective) orbax save, which writes
  host-local numpy arrays from the primary host only.
  """
  params = inference_params(state, config.train, use_ema)
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  params = jax.tree.map(np.asarray, params)
  meta = {'step': int(state.step), 'updates': int(state.updates), 'ema': use_ema,
          'skipped': int(state.skipped)}
  return checkpoints.save_params(directory, params, config.model, meta)

"""Putting the train step on a mesh: rules from config, batch sharding, the jitted step."""
import contextlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections as mlc
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from axturbo import sharding
from axturbo.models import audiox
from axturbo.train import step as step_lib
from axturbo.train.state import TrainState

BATCH_AXES = ('data', 'fsdp')


def make_mesh(shape, devices=None) -> Mesh:
  """`sharding.make_mesh` with Auto axes: the compiler propagates shardings between the
  logical constraints (Explicit axes would turn every constraint into an assertion)."""
  mesh = sharding.make_mesh(shape, devices)
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def mesh_rules(mesh_config: mlc.ConfigDict) -> tuple:
  """DEFAULT_RULES with `mesh.rules` ((logical, mesh axes) pairs) taking precedence."""
  overrides = {name: (tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in (mesh_config.get('rules') or ())}
  unknown = set(overrides) - set(sharding.PARAM_AXES + sharding.ACTIVATION_AXES)
  if unknown:
    raise ValueError(f'mesh.rules: unknown logical axes {sorted(unknown)}')
  return tuple((k, overrides.pop(k, v)) for k, v in sharding.DEFAULT_RULES) + tuple(
      overrides.items())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split along their leading axis over data x fsdp, replicated over tensor."""
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  ways = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch % ways:
    raise ValueError(f'data.batch_size={global_batch} is not divisible by data x fsdp = {ways} '
                     f'(mesh {dict(mesh.shape)})')


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host rows (b, ...) -> global arrays (b * process_count, ...) sharded over the batch."""
  shard = batch_sharding(mesh)
  n = jax.process_count()
  return {k: jax.make_array_from_process_local_data(shard, v, (v.shape[0] * n,) + v.shape[1:])
          for k, v in local.items()}


def abstract_batch(local_example: dict[str, np.ndarray], mesh: Mesh) -> dict:
  shard, n = batch_sharding(mesh), jax.process_count()
  return {k: jax.ShapeDtypeStruct((v.shape[0] * n,) + v.shape[1:], v.dtype, sharding=shard)
          for k, v in local_example.items()}


def jit_train_step(model: audiox.AudioX, tx: optax.GradientTransformation,
                   config: mlc.ConfigDict, mesh: Mesh, state_shardings: TrainState,
                   rules=sharding.DEFAULT_RULES):
  """jit(state, batch) -> (state, metrics): explicit shardings, the state donated.

  The step's randomness is fold_in(state.rng, state.step). Lower it with `compile_step`.
  """
  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    return step_lib.train_step(state, batch, step_lib.step_rng(state), model=model, tx=tx,
                               config=config)

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def mesh_context(mesh: Mesh, rules=sharding.DEFAULT_RULES,
                 activation_constraints: bool = False) -> contextlib.ExitStack:
  """Context for tracing the step.

  With `activation_constraints`, the mesh and logical rules are active so the models'
  `layers.constrain` hints take effect. Off, the hints are no-ops and XLA propagates shardings
  from the explicit parameter/batch shardings alone.
  """
  stack = contextlib.ExitStack()
  if activation_constraints:
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def compile_step(jitted, state: Any, batch: dict, mesh: Mesh, rules=sharding.DEFAULT_RULES,
                 activation_constraints: bool = False):
  """Ahead-of-time compile for abstract (ShapeDtypeStruct) or concrete arguments."""
  with mesh_context(mesh, rules, activation_constraints):
    return jitted.lower(state, batch).compile()

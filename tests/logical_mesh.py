"""Placing a test model's parameters by their logical axis names on a 2x2x2 CPU mesh."""
import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from axturbo.runtime import sharding


@contextlib.contextmanager
def logical_mesh(boxed):
  """Yields the NamedShardings of `boxed` (params from `jax.eval_shape(model.init)`) on a
  (data, fsdp, tensor) = (2, 2, 2) mesh, inside that mesh and the default logical rules.

  Fails when a parameter names an axis the default rules do not know.
  """
  specs = nn.get_partition_spec(boxed)
  is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec)  # noqa: E731
  names = {n for s in jax.tree.leaves(specs, is_leaf=is_spec) for n in s if n is not None}
  assert names <= set(sharding.PARAM_AXES), names - set(sharding.PARAM_AXES)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), sharding.MESH_AXES)
  with mesh, nn.logical_axis_rules(sharding.DEFAULT_RULES):
    yield nn.logical_to_mesh_sharding(specs, mesh, sharding.DEFAULT_RULES)

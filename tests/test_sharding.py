"""Mesh construction and logical-name shardings on 8 fake CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from axturbo.models import layers
from axturbo.runtime import sharding


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = layers.dense(48, ('embed', 'mlp'))(x)
    return layers.dense(6, ('mlp', 'embed'), name='out')(h)  # 6 is not divisible by fsdp=4


def test_mesh_shape_fills_minus_one_and_rejects_bad_shapes():
  assert sharding.mesh_shape((2, -1, 1), 8) == (2, 4, 1)
  assert sharding.mesh_shape((1, 1, -1), 8) == (1, 1, 8)
  with pytest.raises(ValueError, match='at most one'):
    sharding.mesh_shape((-1, -1, 1), 8)
  with pytest.raises(ValueError, match='divide'):
    sharding.mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match='uses 4 devices'):
    sharding.mesh_shape((2, 2, 1), 8)


def test_sharded_init_places_params_by_logical_names():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh((2, -1, 1))  # data=2, fsdp=4
  params = sharding.sharded_init(lambda k: _Tiny().init(k, jnp.ones((1, 16))), mesh,
                                 jax.random.key(0))['params']
  assert params['Dense_0']['kernel'].sharding.spec == P('fsdp', 'tensor')
  # 'embed' -> fsdp cannot split 6 outputs over 4 devices: that dimension is replicated.
  assert params['out']['kernel'].sharding.spec == P('tensor', None)
  # Same values as an unsharded init.
  ref = nn.unbox(_Tiny().init(jax.random.key(0), jnp.ones((1, 16))))['params']
  np.testing.assert_array_equal(np.asarray(params['out']['kernel']), ref['out']['kernel'])

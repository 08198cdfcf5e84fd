"""Multi-slice meshes (`config.mesh.dcn`): the device grid puts each axis's across-slice factor
outside its in-slice one, devices without slices are refused with one line, and the official
train step (shrunk in size) compiles ahead of time on a 2-slice mesh of 8 fake CPU devices with
data parallelism across the slices and FSDP inside each."""
import jax
import numpy as np
import pytest

from axturbo.data import synthetic as synthetic_data
from axturbo.models import audiox
from axturbo.runtime import optim, sharding
from axturbo.train import state as state_lib, step as step_lib

from tests import micro_official_config

# 8 fake CPU devices as 2 slices of 4 (ids 0-3, 4-7), as a 2-slice TPU pod reports them.
SLICE_OF = lambda d: d.id // 4


def _slices(mesh) -> np.ndarray:
  return np.vectorize(SLICE_OF)(mesh.devices)


def test_each_axis_spans_its_slices_outermost():
  mesh = sharding.make_mesh((2, 4, 1), dcn=(2, 1, 1), slice_of=SLICE_OF)
  assert mesh.axis_names == sharding.MESH_AXES and dict(mesh.shape) == {
      'data': 2, 'fsdp': 4, 'tensor': 1}
  # data row i is slice i; fsdp and tensor never leave a slice.
  np.testing.assert_array_equal(_slices(mesh)[:, :, 0], [[0] * 4, [1] * 4])
  # FSDP over 2 slices (not what one wants over DCN, but expressible): its outer half is slice 1.
  mesh = sharding.make_mesh((1, 8, 1), dcn=(1, 2, 1), slice_of=SLICE_OF)
  np.testing.assert_array_equal(_slices(mesh)[0, :, 0], [0, 0, 0, 0, 1, 1, 1, 1])
  mesh = sharding.make_mesh((2, 2, 2), dcn=(2, 1, 1), slice_of=SLICE_OF)
  assert (_slices(mesh)[0] == 0).all() and (_slices(mesh)[1] == 1).all()
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize('dcn, slice_of, message', [
    ((2, 1, 1), None, r'asks for 2 slices, but these cpu devices report none'),
    ((2, 1, 1), lambda d: d.id // 2, r'asks for 2 equal slices, but the 8 devices are in 4 '),
    ((1, 1, 2), SLICE_OF, r'the tensor axis has 1 devices, which do not split over 2 slices'),
    ((0, 1, 1), SLICE_OF, r'one positive across-slice factor per axis'),
])
def test_bad_slices_are_one_line(dcn, slice_of, message):
  with pytest.raises(ValueError, match=message) as e:
    sharding.make_mesh((2, 4, 1), dcn=dcn, slice_of=slice_of)
  assert '\n' not in str(e.value) and 'config.mesh.dcn' in str(e.value)


def test_one_slice_is_the_single_slice_mesh():
  assert (sharding.make_mesh((1, -1, 1), dcn=(1, 1, 1)).devices
          == sharding.make_mesh((1, -1, 1)).devices).all()


@pytest.mark.slow
def test_official_train_step_compiles_on_two_slices():
  """AOT compile of the official train step (micro sizes) on data=2 (across slices) x fsdp=4
  (inside a slice): every parameter shard lives inside one slice and is repeated across the
  slices, and the batch is split over both."""
  config = micro_official_config.get_config()
  config.data.batch_size = 8
  mesh = sharding.make_mesh((2, 4, 1), dcn=(2, 1, 1), slice_of=SLICE_OF)
  rules = sharding.mesh_rules(config.mesh)
  model = audiox.build_model(config.model)
  tx = optim.make_optimizer(config.train.optim, config.train.total_steps)
  init_fn = state_lib.make_init_fn(model, config, tx)
  abstract, shardings = state_lib.abstract_state(init_fn, mesh, rules)
  batch = next(synthetic_data.make_iterator(config))
  step = step_lib.jit_train_step(model, tx, config, mesh, shardings)
  compiled = sharding.compile_step(step, abstract, sharding.abstract_batch(batch, mesh), mesh,
                                   rules, config.mesh.activation_constraints)
  assert compiled.cost_analysis() is not None
  sharded = 0
  for s, leaf in zip(jax.tree.leaves(shardings.params), jax.tree.leaves(abstract.params)):
    index = s.devices_indices_map(leaf.shape)
    # The same shard on the two slices' matching devices: no parameter shard crosses DCN.
    for first, second in zip(mesh.devices[0].flat, mesh.devices[1].flat):
      assert index[first] == index[second]
    sharded += len({str(i) for i in index.values()}) == 4
  assert sharded > 10   # FSDP: most weights in 4 shards, inside each slice
  assert sharding.batch_sharding(mesh).spec[0] == sharding.BATCH_AXES   # over both slices

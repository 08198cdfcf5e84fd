"""Ahead-of-time compile of the teacher train step for a mesh you may not have; memory per device.

  python -m benchmarks.aot_memory --config configs/official.py --devices 8 --mesh 1,-1,1 \
      --batch 8 [--config.model.trunk.remat_policy=full] [--config.model.dtype=bfloat16] \
      [--config.mesh.dcn=(2,1,1)] \
      [--config.train.lora.enabled=True --config.train.lora.rank=16]   # the LoRA step

Builds fake CPU devices, the abstract TrainState (jax.eval_shape: no parameter is ever
materialised), ShapeDtypeStruct batches, then jit(...).lower(...).compile() and prints
`compiled.memory_analysis()` (per device: arguments = sharded params + optimizer state + EMA +
batch; temp = activations and scratch) and XLA's FLOP count. CPU numbers approximate what a
GPU/TPU compile of the same SPMD program needs (layouts and fusion differ per backend).
A multi-slice mesh (`config.mesh.dcn` with more than one slice) stands the fake devices in for
prod(dcn) slices of consecutive device ids, as a multi-slice pod reports them.
"""
import time

from absl import app, flags
from ml_collections import config_flags

from benchmarks import aot_report


_CONFIG = config_flags.DEFINE_config_file('config', 'configs/official.py', 'Model/train config.')
_DEVICES = flags.DEFINE_integer('devices', 8, 'Fake CPU devices.')
_MESH = flags.DEFINE_string('mesh', '1,-1,1', 'data,fsdp,tensor (one -1).')
_BATCH = flags.DEFINE_integer('batch', 8, 'Global batch.')


def main(argv):
  del argv
  aot_report.use_fake_cpu_devices(_DEVICES.value)
  import numpy as np

  from axturbo.data import pipeline
  from axturbo.models import audiox
  from axturbo.runtime import optim, sharding
  from axturbo.train import state as state_lib, step as step_lib

  config = _CONFIG.value
  m = config.model
  dcn = tuple(config.mesh.dcn)
  per_slice = _DEVICES.value // int(np.prod(dcn))
  mesh = sharding.make_mesh(tuple(int(x) for x in _MESH.value.split(',')), dcn=dcn,
                            slice_of=lambda d: d.id // per_slice)
  rules = sharding.mesh_rules(config.mesh)
  model = audiox.build_model(m)
  tx = optim.make_optimizer(config.train.optim, config.train.total_steps)
  init_fn = state_lib.make_init_fn(model, config, tx)
  abstract, shardings = state_lib.abstract_state(init_fn, mesh, rules)

  b = _BATCH.value
  # Shapes/dtypes of one global batch (a single process holds all of it here).
  local = {k: np.stack([v] * b) for k, v in pipeline.empty_example(m).items()}
  batch = sharding.abstract_batch(local, mesh)
  step = step_lib.jit_train_step(model, tx, config, mesh, shardings)
  t0 = time.perf_counter()
  compiled = sharding.compile_step(step, abstract, batch, mesh, rules,
                                   config.mesh.activation_constraints)
  secs = time.perf_counter() - t0

  count = aot_report.count
  trainable, _ = optim.split_params(abstract.params, state_lib.trainable_prefixes(config.train))
  print(f'mesh {dict(mesh.shape)}  across slices {dict(zip(mesh.axis_names, dcn))}  '
        f'global batch {b}  dtype {m.dtype}  '
        f'remat {m.trunk.remat_policy}  scan {m.trunk.scan_layers}  compile {secs:.0f} s')
  print(f'params {count(abstract.params) / 1e6:.1f} M (trainable {count(trainable) / 1e6:.1f} M, '
        f'EMA {count(abstract.ema) / 1e6:.1f} M, optimizer state '
        f'{count(abstract.opt_state) / 1e6:.1f} M values)')
  aot_report.print_memory(compiled)


if __name__ == '__main__':
  app.run(main)

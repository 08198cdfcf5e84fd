"""Ahead-of-time compile of the teacher train step for a mesh you may not have; memory per device.

  python benchmarks/aot_memory.py --config configs/official.py --devices 8 --mesh 1,-1,1 \
      --batch 8 [--config.model.trunk.remat_policy=full] [--config.model.dtype=bfloat16]

Builds fake CPU devices, the abstract TrainState (jax.eval_shape: no parameter is ever
materialised), ShapeDtypeStruct batches, then jit(...).lower(...).compile() and prints
`compiled.memory_analysis()` (per device: arguments = sharded params + optimizer state + EMA +
batch; temp = activations and scratch) and XLA's FLOP count. CPU numbers approximate what a
GPU/TPU compile of the same SPMD program needs (layouts and fusion differ per backend).
"""
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/official.py', 'Model/train config.')
_DEVICES = flags.DEFINE_integer('devices', 8, 'Fake CPU devices.')
_MESH = flags.DEFINE_string('mesh', '1,-1,1', 'data,fsdp,tensor (one -1).')
_BATCH = flags.DEFINE_integer('batch', 8, 'Global batch.')


def _gib(n):
  return f'{n / 2**30:8.2f} GiB'


def main(argv):
  del argv
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={_DEVICES.value}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  import numpy as np

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from axturbo.data import pipeline
  from axturbo.models import audiox
  from axturbo.train import optim, parallel, state as state_lib

  config = _CONFIG.value
  m = config.model
  mesh = parallel.make_mesh(tuple(int(x) for x in _MESH.value.split(',')))
  rules = parallel.mesh_rules(config.mesh)
  model = audiox.build_model(m)
  tx = optim.make_optimizer(config.train)
  init_fn = state_lib.make_init_fn(model, config, tx)
  abstract, shardings = state_lib.abstract_state(init_fn, mesh, rules)

  b = _BATCH.value
  # Shapes/dtypes of one global batch (a single process holds all of it here).
  local = {k: np.stack([v] * b) for k, v in pipeline.empty_example(m).items()}
  batch = parallel.abstract_batch(local, mesh)
  step = parallel.jit_train_step(model, tx, config, mesh, shardings, rules)
  t0 = time.perf_counter()
  compiled = parallel.compile_step(step, abstract, batch, mesh, rules,
                                   config.mesh.activation_constraints)
  secs = time.perf_counter() - t0

  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  trainable, _ = optim.split_params(abstract.params, config.train.trainable)
  mem = compiled.memory_analysis()
  print(f'mesh {dict(mesh.shape)}  global batch {b}  dtype {m.dtype}  '
        f'remat {m.trunk.remat_policy}  scan {m.trunk.scan_layers}  compile {secs:.0f} s')
  print(f'params {count(abstract.params) / 1e6:.1f} M (trainable {count(trainable) / 1e6:.1f} M, '
        f'EMA {count(abstract.ema) / 1e6:.1f} M, optimizer state '
        f'{count(abstract.opt_state) / 1e6:.1f} M values)')
  for field in ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
                'temp_size_in_bytes', 'generated_code_size_in_bytes'):
    print(f'  per device {field:32s} {_gib(getattr(mem, field))}')
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + \
      mem.temp_size_in_bytes
  print(f'  per device {"peak (args + out - alias + temp)":32s} {_gib(peak)}')
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and cost.get('flops'):
    print(f'  per device flops / step {cost["flops"] / 1e12:.2f} TFLOP')


if __name__ == '__main__':
  app.run(main)

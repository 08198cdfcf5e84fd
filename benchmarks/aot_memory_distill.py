"""Ahead-of-time compile of both distillation steps (student; fake + D) for a mesh you may not
have; memory per device. The distillation twin of benchmarks/aot_memory.py.

  python -m benchmarks.aot_memory_distill --config configs/official.py --devices 8 \
      --mesh 1,-1,1 --batch 8 [--config.model.dtype=bfloat16] [--steps student,fake]

Abstract teacher (full AudioX tree), abstract DistillState (student, fake, heads, EMA, two AdamW
states) and ShapeDtypeStruct batches, all with their shardings; nothing is materialised.
"""
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from benchmarks import aot_report


_CONFIG = config_flags.DEFINE_config_file('config', 'configs/official.py', 'Model/distill config.')
_DEVICES = flags.DEFINE_integer('devices', 8, 'Fake CPU devices.')
_MESH = flags.DEFINE_string('mesh', '1,-1,1', 'data,fsdp,tensor (one -1).')
_BATCH = flags.DEFINE_integer('batch', 8, 'Global batch.')
_STEPS = flags.DEFINE_list('steps', ['student', 'fake'], 'Which steps to compile.')


def main(argv):
  del argv
  aot_report.use_fake_cpu_devices(_DEVICES.value)
  import flax.linen as nn
  import jax
  import numpy as np

  from axturbo.runtime import sharding
  from axturbo.distill import state as state_lib, step as step_lib
  from axturbo.data import pipeline
  from axturbo.models import audiox
  from axturbo.runtime import sharding

  config = _CONFIG.value
  m, d = config.model, config.distill
  state_lib.check_distill_config(config)
  mesh = sharding.make_mesh(tuple(int(x) for x in _MESH.value.split(',')))
  rules = sharding.mesh_rules(config.mesh)
  model = audiox.build_model(m)
  boxed = state_lib.abstract_params(model, m)
  t_shard = sharding.logical_shardings(boxed, mesh, rules)
  teacher = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         nn.unbox(boxed), t_shard)
  txs = step_lib.make_optimizers(d)
  init_fn = state_lib.make_init_fn(model, config, *txs)
  abstract, shardings = state_lib.abstract_state(init_fn, model, config, mesh, rules)

  b = _BATCH.value
  # Shapes/dtypes of one global batch (a single process holds all of it here).
  local = {k: np.stack([v] * b) for k, v in pipeline.empty_example(m).items()}
  batch = sharding.abstract_batch(local, mesh)
  jitted = step_lib.jit_steps(model, txs, config, mesh, shardings, t_shard)
  count = aot_report.count
  print(f'mesh {dict(mesh.shape)}  global batch {b}  dtype {m.dtype}  '
        f'remat {m.trunk.remat_policy}  scan {m.trunk.scan_layers}')
  print(f'teacher {count(teacher) / 1e6:.1f} M; student {count(abstract.student) / 1e6:.1f} M, '
        f'fake {count(abstract.fake) / 1e6:.1f} M, heads {count(abstract.heads) / 1e6:.2f} M, '
        f'EMA {count(abstract.ema) / 1e6:.1f} M, optimizer states '
        f'{(count(abstract.student_opt) + count(abstract.fake_opt)) / 1e6:.1f} M values')
  for kind in _STEPS.value:
    t0 = time.perf_counter()
    compiled = step_lib.compile_steps(jitted, {(kind, True)}, abstract, teacher, batch, mesh,
                                      rules, config.mesh.activation_constraints)[(kind, True)]
    secs = time.perf_counter() - t0
    print(f'{kind} step (compile {secs:.0f} s):')
    aot_report.print_memory(compiled)
    sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)

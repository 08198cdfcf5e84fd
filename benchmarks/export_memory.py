"""Peak host memory of `checkpoints.export` (docs/benchmarks.md, "Export host memory").

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.export_memory \
      --depth 3 --out /tmp/export_bench

Random-initialises the official trunk (configs/official.py, `--depth` blocks) sharded over an
(1, 4, 2) mesh of the local devices, then exports it alone ({'trunk': ...}, params only). Prints
the process's peak RSS before the export (the parameters themselves live in host memory on fake
CPU devices) and after it; the difference is what the export adds on the host. Run it against an
older checkout (PYTHONPATH) to compare versions: only `checkpoints.export` is called.
"""
import resource
import shutil
import sys
import time

from absl import app
from absl import flags

_DEPTH = flags.DEFINE_integer('depth', 3, 'Trunk blocks (official: 24).')
_MESH = flags.DEFINE_string('mesh', '1,4,2', '(data, fsdp, tensor)')
_OUT = flags.DEFINE_string('out', None, 'Export folder (replaced).', required=True)


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  depth, out = _DEPTH.value, _OUT.value

  import jax
  from configs import official
  from axturbo.distill import state as distill_state
  from axturbo.models import audiox
  from axturbo.runtime import checkpoints, sharding

  c = official.get_config()
  c.model.trunk.depth = depth
  model = audiox.build_model(c.model)
  boxed = {'trunk': distill_state.abstract_params(model, c.model)['trunk']}
  mesh = sharding.make_mesh(tuple(int(x) for x in _MESH.value.split(',')))
  abstract, shardings = sharding.abstract_with_shardings(boxed, mesh)
  leaves, treedef = jax.tree.flatten(abstract)

  def init(key):
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([0.02 * jax.random.normal(k, x.shape, x.dtype)
                              for k, x in zip(keys, leaves)])
  params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  jax.block_until_ready(params)
  n = sum(x.size for x in jax.tree.leaves(params))
  nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  before = _peak_rss_mib()
  shutil.rmtree(out, ignore_errors=True)
  t0 = time.perf_counter()
  checkpoints.export(out, params, c.model, {'kind': 'teacher', 'step': 0})
  seconds = time.perf_counter() - t0
  after = _peak_rss_mib()
  print(f'trunk depth {depth}: {n / 1e6:.1f} M params ({nbytes / 2**20:.0f} MiB float32) '
        f'on mesh {dict(mesh.shape)}; peak RSS before export {before:.0f} MiB, after '
        f'{after:.0f} MiB (+{after - before:.0f} MiB); export {seconds:.1f} s')


if __name__ == '__main__':
  app.run(main)

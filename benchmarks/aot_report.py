"""What the AOT memory benchmarks share: fake CPU devices, parameter counts, the memory report.

Import it from a benchmark script: `from benchmarks import aot_report`.
"""
import os


def use_fake_cpu_devices(n: int) -> None:
  """Asks XLA for `n` host devices; call before jax is first imported."""
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={n}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def count(tree) -> int:
  """Number of values in a tree of arrays or ShapeDtypeStructs."""
  import jax
  import numpy as np
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _gib(n: int) -> str:
  return f'{n / 2**30:8.2f} GiB'


def print_memory(compiled) -> None:
  """Per-device `memory_analysis()` fields, the peak (args + out - alias + temp) and XLA's FLOPs."""
  from axturbo.runtime import reporting
  mem = compiled.memory_analysis()
  for field in ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
                'temp_size_in_bytes', 'generated_code_size_in_bytes'):
    print(f'  per device {field:32s} {_gib(getattr(mem, field))}')
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  print(f'  per device {"peak (args + out - alias + temp)":32s} {_gib(peak)}')
  flops = reporting.compiled_flops(compiled)
  if flops:
    print(f'  per device flops / step {flops / 1e12:.2f} TFLOP')

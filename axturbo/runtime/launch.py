"""What train.py and distill.py share at launch: multi-host flags, config-flag errors, the
workdir and mesh, data.

Nothing here runs on import: a script calls `define_multihost_flags()` at its top level (absl
flags must exist before parsing) and passes `parse_flags` to `absl.app.run`.
"""
import dataclasses
import os
import sys

from absl import flags


@dataclasses.dataclass(frozen=True)
class MultihostFlags:
  distributed: flags.FlagHolder
  coordinator: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder


def define_multihost_flags() -> MultihostFlags:
  """--distributed (cluster auto-detection) or an explicit coordinator/num_processes/process_id
  (each also read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""
  return MultihostFlags(
      flags.DEFINE_bool('distributed', False,
                        'Call jax.distributed.initialize() with cluster auto-detection '
                        '(TPU VMs, SLURM).'),
      flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
                          'host:port of process 0 (explicit multi-process setup).'),
      flags.DEFINE_integer('num_processes', None, 'Number of processes.'),
      flags.DEFINE_integer('process_id', None, 'This process (0-based).'))


def init_distributed(f: MultihostFlags) -> None:
  """jax.distributed.initialize as the flags ask; a single process needs nothing."""
  import jax
  if f.coordinator.value:
    num = f.num_processes.value or _env_int('JAX_NUM_PROCESSES', '--num_processes')
    pid = (f.process_id.value if f.process_id.value is not None
           else _env_int('JAX_PROCESS_ID', '--process_id'))
    jax.distributed.initialize(f.coordinator.value, num_processes=num, process_id=pid)
  elif f.distributed.value:
    jax.distributed.initialize()


def _env_int(name: str, flag: str) -> int:
  value = os.environ.get(name)
  if value is None or not value.strip().isdigit():
    raise SystemExit(f'--coordinator_address is set: give {flag} or set {name} '
                     f'(got {value!r})')
  return int(value)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing with a one-line error (no traceback) for a bad --config.* override.

  ml_collections raises AttributeError/KeyError for an unknown field and TypeError/ValueError
  for a value of the wrong type, from deep inside flag parsing.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'{argv[0]}: {e}\nTry --helpfull for the list of flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    key = str(e).strip('\'"')
    culprit = next((a for a in overrides if key and key in a.split('=')[0]), None)
    if culprit and isinstance(e, (AttributeError, KeyError)):
      name = culprit.split('=')[0][len('--config.'):]
      sys.exit(f'{argv[0]}: unknown config key {name!r} (in {culprit!r}): the config has no '
               f'field {key!r} there; see the config file for the fields')
    if culprit:
      sys.exit(f'{argv[0]}: bad value in {culprit!r}: {type(e).__name__}: {e}')
    sys.exit(f'{argv[0]}: could not parse the command line: {type(e).__name__}: {e}')


def start_run(config, workdir):
  """Creates `workdir`, logs this process's devices, and builds the mesh from `config.mesh`
  (checking that `config.data.batch_size` divides over it). Returns (absolute workdir, mesh,
  logical-axis rules)."""
  import pathlib

  import jax
  from absl import logging

  from axturbo.runtime import sharding
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  logging.info('process %d/%d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  mesh = sharding.make_mesh(config.mesh.shape)
  sharding.check_batch_size(config.data.batch_size, mesh)
  return workdir, mesh, sharding.mesh_rules(config.mesh)


def make_data_iterator(config, source: str, field: str, process_index: int,
                       process_count: int):
  """The training split's iterator from `source` ('pipeline': grain over the configured data;
  'synthetic': learnable tones with the batch's shapes, for benchmarks and smoke runs); `field`
  names the config entry for the error message."""
  if source == 'synthetic':
    from axturbo.data import synthetic as data
  elif source == 'pipeline':
    from axturbo.data import pipeline as data
  else:
    raise ValueError(f"{field}={source!r}; expected 'pipeline' or 'synthetic'")
  return data.make_iterator(config, split='train', process_index=process_index,
                            process_count=process_count)

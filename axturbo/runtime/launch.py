"""What train.py and distill.py share at launch: multi-host flags, config-flag errors, the
workdir and mesh, data.

Nothing here runs on import: a script calls `define_multihost_flags()` at its top level (absl
flags must exist before parsing) and passes `parse_flags` to `absl.app.run`.
"""
import contextlib
import dataclasses
import logging as pylogging
import os
import pathlib
import sys

from absl import flags
from absl import logging


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
  for a value of the wrong type, from deep inside flag parsing, and reports a missing config
  file in five lines only when the config is first used.
  """
  config = _config_path(argv[1:])
  if config is not None and not os.path.isfile(config):
    sys.exit(f'{argv[0]}: --config {config}: no such file')
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


def _config_path(args: list[str]) -> str | None:
  """The file of `--config=FILE[:ARG]` / `--config FILE[:ARG]`, if given."""
  for i, a in enumerate(args):
    if a.startswith('--config='):
      value = a[len('--config='):]
    elif a == '--config' and i + 1 < len(args):
      value = args[i + 1]
    else:
      continue
    return value.split(':', 1)[0]
  return None


def start_run(config, workdir, log_name: str):
  """Creates `workdir`, starts its log file (`log_to_workdir`), logs this process's devices,
  and builds the mesh from `config.mesh` (checking that `config.data.batch_size` divides over
  it). Returns (absolute workdir, mesh, logical-axis rules)."""
  import jax

  from axturbo.runtime import sharding
  workdir = pathlib.Path(workdir).absolute()
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f'--workdir {workdir}: exists and is not a directory')
  workdir.mkdir(parents=True, exist_ok=True)
  log = log_to_workdir(workdir / f'{log_name}.log')
  logging.info('process %d/%d, %d local / %d global devices; full log in %s',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), log)
  mesh = sharding.make_mesh(config.mesh.shape)
  sharding.check_batch_size(config.data.batch_size, mesh)
  return workdir, mesh, sharding.mesh_rules(config.mesh)


_PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parent.parent)


def _console_filter(record: pylogging.LogRecord) -> bool:
  """The console keeps warnings and this project's own lines; library INFO (orbax writes ~57
  lines per checkpoint) goes only to the log file."""
  path = os.path.abspath(record.pathname)
  ours = path.startswith(_PACKAGE_DIR) or path == os.path.abspath(sys.argv[0])
  if record.levelno >= pylogging.WARNING:
    # A library's error with a traceback (orbax logs one per failed writer thread on a full
    # disk: hundreds of lines) goes to the log file only; the run's own `error:` line says it.
    return ours or not record.exc_info
  return ours


class _RunLogHandler(pylogging.FileHandler):
  """The run's log file. When the disk is full, a failed write is dropped: Python's default
  prints '--- Logging error ---' and a traceback to the console for every line, burying the
  run's one `error:` line that says the disk is full."""

  def handleError(self, record):
    del record


def log_to_workdir(path: pathlib.Path) -> pathlib.Path:
  """Every INFO line (all libraries) is appended to `path`; unless --verbosity was given, the
  console shows only `_console_filter`'s lines. A second run in the same process (a notebook)
  moves the log to its own workdir."""
  for logger in (pylogging.getLogger(), _traceback_logger()):
    for old in [h for h in logger.handlers if getattr(h, 'axturbo_run_log', False)]:
      logger.removeHandler(old)
      old.close()
  handler = _RunLogHandler(path)
  handler.axturbo_run_log = True
  handler.setFormatter(logging.PythonFormatter())
  handler.setLevel(pylogging.INFO)
  pylogging.getLogger().addHandler(handler)
  _traceback_logger().addHandler(handler)
  absl_handler = logging.get_absl_handler()
  if not (flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].present):
    if _console_filter not in absl_handler.filters:
      absl_handler.addFilter(_console_filter)
  return path


def _traceback_logger() -> pylogging.Logger:
  """Tracebacks of user errors: to the log file only (nowhere before it exists)."""
  logger = pylogging.getLogger('axturbo.user_error')
  if not logger.handlers:
    logger.propagate = False
    logger.addHandler(pylogging.NullHandler())
  return logger


# What a user can cause and fix: bad input, paths, data. Anything else is a bug and keeps its
# traceback.
USER_ERRORS = (ValueError, OSError, EOFError)


@contextlib.contextmanager
def one_line_errors():
  """Turns a user error into one console line (`error: ...`, exit 1); its traceback still
  goes to the log file."""
  from axturbo.data import pipeline
  try:
    yield
  except (*USER_ERRORS, pipeline.SkipLimitError) as e:
    _traceback_logger().error('stopped by %s', type(e).__name__, exc_info=True)
    # grain appends a note on its traceback filtering after a dashed line
    sys.exit(f'error: {_outside_world(e) or str(e).split(chr(10) + "-" * 20)[0]}')


_NO_SPACE = ('No space left on device', 'Disk quota exceeded')


def _outside_world(e: BaseException) -> str | None:
  """One line for a full disk (what happened, where, what was kept), from an OSError or the
  message orbax/tensorstore wrap it in; None for anything else."""
  import re
  text = str(e)
  if not any(n in text for n in _NO_SPACE) and getattr(e, 'errno', None) != 28:
    return None
  path = getattr(e, 'filename', None)
  if not path:
    m = re.search(r'(?:local file|Failed writing:) "([^"]+)"', text)
    path = m.group(1) if m else '?'
  path = re.sub(r'\.orbax-checkpoint-tmp.*$', '', str(path))
  return (f'no space left on device while writing {path}; the unfinished write was not kept, '
          'every checkpoint and export finished before it is (traceback in the log file)')


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

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
import warnings

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


T5_TOKENIZER_HELP = (
    "a local folder with t5-base's tokenizer files (spiece.model, tokenizer_config.json, ... from "
    "https://huggingface.co/t5-base; e.g. transformers.AutoTokenizer.from_pretrained('t5-base')"
    ".save_pretrained(DIR)), or the tokenizer/ folder of a checkpoint written by "
    "`python -m axturbo.convert --t5 ...`")


def check_inputs(config, data_source: str, init_from: str = '', require_init_from: bool = False
                 ) -> None:
  """The files a config needs that the repository does not ship, checked before any heavy
  work: a missing one stops the run with one line saying what to pass and where it comes from.

  data_source: the run's `*.data_source` ('synthetic' tokenizes offline, without a folder).
  init_from / require_init_from: train.py's `train.init_from` and `train.require_init_from`.
  """
  from axturbo.runtime import checkpoints
  text = config.model.text
  if text.tokenizer == 'hf' and data_source != 'synthetic':
    if not text.tokenizer_dir:
      raise ValueError("config.model.text.tokenizer_dir is empty, and model.text.tokenizer "
                       "'hf' reads captions with T5's vocabulary: pass "
                       f"--config.model.text.tokenizer_dir=DIR, {T5_TOKENIZER_HELP}")
    if not checkpoints.as_path(text.tokenizer_dir).is_dir():
      raise FileNotFoundError(f'--config.model.text.tokenizer_dir={text.tokenizer_dir}: no '
                              f'such folder; it must be {T5_TOKENIZER_HELP}')
  if require_init_from and not init_from:
    raise ValueError(
        'config.train.init_from is empty, and this config (train.require_init_from) fine-tunes '
        'released weights (its T5, CLIP and VAE are frozen): pass --config.train.init_from=DIR, '
        'a checkpoint written by `python -m axturbo.convert --config configs/official.py '
        '--checkpoint audiox_turbo.ckpt ...` from the official AudioX-Turbo release (docs/guide/'
        'generating.md, "With the official weights"), or --config.train.require_init_from=False to start from random '
        'weights')
  if init_from and not (checkpoints.as_path(init_from) / checkpoints.CONFIG_FILE).is_file():
    raise FileNotFoundError(f'--config.train.init_from={init_from}: not an axturbo checkpoint '
                            f'(no {checkpoints.CONFIG_FILE}); write one with `python -m '
                            'axturbo.convert` or use a train.py/distill.py <workdir>/export')


def start_run(config, workdir, log_name: str):
  """Creates `workdir` (a local folder or an etils.epath URL such as gs://bucket/run), locks it
  (`workdir_lock`: one run at a time), starts its log file (`log_to_workdir`), logs this
  process's devices, builds the mesh from `config.mesh` (checking that
  `config.data.batch_size` divides over it), and records the run (`run_record`: config.json,
  run_record.json; a resume under a changed `model.*` config stops here). Returns (absolute
  workdir as an epath.Path, mesh, logical-axis rules)."""
  import jax

  from axturbo.runtime import checkpoints, profiling, run_record, sharding, workdir_lock
  profiling.check_profile(config.profile)
  workdir = checkpoints.as_path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f'--workdir {workdir}: exists and is not a directory')
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lock.acquire_for_run(workdir)   # before the log: a refused run writes nothing there
  log = log_to_workdir(workdir / f'{log_name}.log')
  logging.info('process %d/%d, %d local / %d global devices; full log in %s',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), log)
  mesh = sharding.make_mesh(config.mesh.shape, dcn=config.mesh.get('dcn', (1, 1, 1)))
  sharding.check_batch_size(config.data.batch_size, mesh)
  run_record.record_start(workdir, config, mesh, log_name)
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


def _library_async_error(exc_type, exc_value, tb) -> bool:
  """Whether an error nobody could catch comes from orbax's or tensorstore's async I/O."""
  if exc_type is RuntimeError and str(exc_value) == 'Event loop is closed':
    return True
  while tb is not None:
    if any(f'{os.sep}{name}{os.sep}' in tb.tb_frame.f_code.co_filename
           for name in ('orbax', 'tensorstore')):
      return True
    tb = tb.tb_next
  return False


def _late_writer_hook(previous):
  """sys.unraisablehook that sends orbax's and tensorstore's leftover async errors to the log
  file. When one checkpoint read or write fails (a full disk, a damaged file), the run stops
  with one `error:` line, but the sibling reads and writes still in flight fail later on their
  own (a closed event loop, a coroutine closed mid-read) and Python prints each as 'Exception
  ignored in': hundreds of tracebacks around that line. Everything else goes to `previous`."""

  def hook(unraisable):
    if _library_async_error(unraisable.exc_type, unraisable.exc_value,
                            unraisable.exc_traceback):
      _traceback_logger().info(
          'late orbax/tensorstore error after the run handled the first one',
          exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
      return
    previous(unraisable)

  hook.axturbo_late_writer = True
  return hook


def _unawaited_coroutines_to_log(previous):
  """warnings.showwarning that sends 'coroutine ... was never awaited' to the log file: this
  project has no coroutines, and orbax's, abandoned after a failed checkpoint write, warn at
  exit, after the run's `error:` line."""

  def show(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, RuntimeWarning) and 'was never awaited' in str(message):
      _traceback_logger().info('%s:%s: %s', filename, lineno, message)
      return
    previous(message, category, filename, lineno, file, line)

  show.axturbo_unawaited = True
  return show


def log_to_workdir(path) -> pathlib.Path:
  """Every INFO line (all libraries) is appended to `path`; unless --verbosity was given, the
  console shows only `_console_filter`'s lines. A second run in the same process (a notebook)
  moves the log to its own workdir. A URL `path` (a bucket cannot be appended to) is written
  locally (`reporting.local_copy`) and uploaded at exit; returns the local file."""
  from axturbo.runtime import reporting
  for logger in (pylogging.getLogger(), _traceback_logger()):
    for old in [h for h in logger.handlers if getattr(h, 'axturbo_run_log', False)]:
      logger.removeHandler(old)
      old.close()
  path = reporting.local_copy(path)
  handler = _RunLogHandler(path)
  handler.axturbo_run_log = True
  handler.setFormatter(logging.PythonFormatter())
  handler.setLevel(pylogging.INFO)
  pylogging.getLogger().addHandler(handler)
  _traceback_logger().addHandler(handler)
  if not getattr(sys.unraisablehook, 'axturbo_late_writer', False):
    sys.unraisablehook = _late_writer_hook(sys.unraisablehook)
  if not getattr(warnings.showwarning, 'axturbo_unawaited', False):
    warnings.showwarning = _unawaited_coroutines_to_log(warnings.showwarning)
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
  goes to the log file. A stop on SIGTERM or Ctrl-C (`preemption`) is one line too, with its
  own exit code."""
  from axturbo.data import pipeline
  from axturbo.runtime import preemption
  try:
    yield
  except (*USER_ERRORS, pipeline.SkipLimitError) as e:
    _traceback_logger().error('stopped by %s', type(e).__name__, exc_info=True)
    # grain appends a note on its traceback filtering after a dashed line
    _exit(f'error: {_outside_world(e) or str(e).split(chr(10) + "-" * 20)[0]}', 1)
  except preemption.Stopped as e:
    _traceback_logger().info('%s', e)
    _exit(str(e), e.exit_code)
  except KeyboardInterrupt:
    # Outside the step loop (loading, compiling, exporting): nothing new to save.
    _traceback_logger().error('interrupted', exc_info=True)
    _exit('interrupted (Ctrl-C): stopped; checkpoints and exports on disk are whole',
          preemption.EXIT_INTERRUPTED)


def _exit(line: str, code: int):
  """Writes `line` and its newline in one write (the hosts of a multi-host run often share one
  console file: two lines written in parts interleave), then exits with `code`."""
  sys.stderr.write(line + '\n')
  sys.stderr.flush()
  sys.exit(code)


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
  # save_params writes `<dir>/.<name>.partial-<tag>/...` first: name the folder it replaces.
  path = re.sub(r'/\.([^/]+)\.partial-[0-9a-f]+(/.*)?$', r'/\1', path)
  return (f'no space left on device while writing {path}; the unfinished write was not kept, '
          'every checkpoint and export finished before it is (traceback in the log file)')


def make_data_iterator(config, source: str, field: str, process_index: int,
                       process_count: int, split: str = 'train'):
  """The `split` ('train' or 'heldout') iterator from `source` ('pipeline': grain over the
  configured data; 'synthetic': learnable tones with the batch's shapes, for benchmarks and
  smoke runs); `field` names the config entry for the error message."""
  if source == 'synthetic':
    from axturbo.data import synthetic as data
  elif source == 'pipeline':
    from axturbo.data import pipeline as data
  else:
    raise ValueError(f"{field}={source!r}; expected 'pipeline' or 'synthetic'")
  return data.make_iterator(config, split=split, process_index=process_index,
                            process_count=process_count)

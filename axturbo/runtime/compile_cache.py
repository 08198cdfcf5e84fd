"""JAX's persistent compilation cache for every command line (train.py, distill.py, sample.py,
`python -m axturbo.eval`): a second start loads its compiled programs instead of compiling
them again (the official-size train step takes 40 s to 4 min to compile).

One value says where, `config.compile_cache` in train.py / distill.py and `--compile_cache` in
sample.py / the eval CLI:
  'default'  $JAX_COMPILATION_CACHE_DIR if set (JAX's own variable, so a site-wide choice
             wins), else $XDG_CACHE_HOME/axturbo/jax_compile, else ~/.cache/axturbo/jax_compile.
  ''         off.
  a folder   that folder: a local path (`~` expanded) or a URL that JAX's cache can write
             (gs://bucket/jax_cache: one folder all hosts of a pod share).
JAX caches only programs that took at least `jax_persistent_cache_min_compile_time_secs` (1 s;
env JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS) to compile. The cache keys on the program, the
devices and the JAX/XLA versions, so a stale entry is never used; the folder grows until it is
deleted.

`enable` must run before the process compiles anything: JAX decides once, at its first
compile, whether the cache is in use. Nothing here runs on import.
"""
import os
import threading

from absl import flags
from absl import logging

DEFAULT = 'default'
HELP = ("Folder of JAX's persistent compilation cache: 'default' ($JAX_COMPILATION_CACHE_DIR, "
        "else $XDG_CACHE_HOME/axturbo/jax_compile, else ~/.cache/axturbo/jax_compile), a path "
        "or gs:// URL, or '' (off).")

_HITS = '/jax/compilation_cache/cache_hits'
_REQUESTS = '/jax/compilation_cache/compile_requests_use_cache'
_SAVED = '/jax/compilation_cache/compile_time_saved_sec'

_lock = threading.Lock()
_state = {'dir': None, 'listening': False, 'requests': 0, 'hits': 0, 'saved_s': 0.0}


def define_flag() -> flags.FlagHolder:
  """--compile_cache for the scripts without a config (sample.py, the eval CLI)."""
  return flags.DEFINE_string('compile_cache', DEFAULT, HELP)


def default_dir() -> str:
  """Where 'default' points: JAX's env variable, else the per-user XDG cache folder."""
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'axturbo', 'jax_compile')


def resolve(value: str | None) -> str | None:
  """The cache folder a `compile_cache` value names, or None for off ('' or None)."""
  if value is None or not str(value).strip():
    return None
  value = str(value).strip()
  if value == DEFAULT:
    return default_dir()
  return value if '://' in value else os.path.expanduser(value)


def enable(value: str | None, field: str) -> str | None:
  """Turns the cache on in `resolve(value)` (off for ''), and counts its hits for `summary`.

  `field` names the flag or config key in errors. A folder given explicitly that cannot be
  created is an error (ValueError, one line); the default folder that cannot be created (a
  read-only home) only warns and leaves the cache off. Returns the folder, or None.
  """
  import jax
  path = resolve(value)
  if path is not None and '://' not in path:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      if value != DEFAULT:
        raise ValueError(f'{field}={value!r}: cannot create the compilation cache folder '
                         f'{path}: {e.strerror or e}') from e
      logging.warning('compilation cache off: cannot create %s (%s); set %s to another '
                      'folder', path, e.strerror or e, field)
      path = None
  if path is None:
    jax.config.update('jax_enable_compilation_cache', False)
  else:
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', path)
    _listen()
  _state['dir'] = path
  logging.info('compilation cache: %s', path or f'off ({field} is empty)')
  return path


def _listen() -> None:
  import jax
  with _lock:
    if _state['listening']:
      return
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _state['listening'] = True


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  if event in (_HITS, _REQUESTS):
    with _lock:
      _state['hits' if event == _HITS else 'requests'] += 1


def _on_duration(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event == _SAVED:
    with _lock:
      _state['saved_s'] += max(float(duration), 0.0)


def counts() -> tuple[int, int]:
  """(programs looked up in the cache, programs loaded from it) so far in this process."""
  with _lock:
    return _state['requests'], _state['hits']


def note_since(before: tuple[int, int]) -> str:
  """' (K of N programs from the compilation cache)' for the lookups since `before`
  (a `counts()`), or '' when the cache is off or nothing was looked up."""
  requests, hits = counts()
  requests -= before[0]
  hits -= before[1]
  if _state['dir'] is None or requests <= 0:
    return ''
  return f' ({hits} of {requests} programs from the compilation cache)'


def summary() -> str:
  """One line for the end of a run: the folder, hits of lookups, compile time saved."""
  if _state['dir'] is None:
    return 'compilation cache: off'
  requests, hits = counts()
  return (f'compilation cache {_state["dir"]}: {hits} of {requests} programs loaded from it '
          f'(about {_state["saved_s"]:.1f} s of compiling saved)')

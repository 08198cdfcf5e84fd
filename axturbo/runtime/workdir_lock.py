"""One writer per workdir: `<workdir>/run.lock`, held by process 0 of a run for its lifetime.

The lock is an exclusive `flock` on that file, which the kernel drops when its holder dies
(however it dies), and the file records who holds it (pid, host, start time, command) so that a
second run can name the first. A record found under a free lock was left by a run that died
without releasing it: the lock is taken over, with a warning naming that run. The file itself is
never deleted (deleting it would let two runs lock two different files).

Multi-host: only process 0 locks (the workdir is one shared folder); it broadcasts the outcome,
so every host of a refused run stops with the same line. A filesystem without `flock` (some
FUSE mounts) and an object-store URL (gs://...) get a warning and no lock.
"""
import atexit
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys

from absl import logging
import numpy as np

LOCK_FILE = 'run.lock'
_MESSAGE_BYTES = 2048
_held: dict[str, int] = {}   # lock path -> open file descriptor, for this process


class WorkdirInUseError(OSError):
  """Another live process holds the workdir's lock."""


def _read_record(fd: int) -> dict | None:
  """The holder's record, or None when the file is empty or half written."""
  data = os.pread(fd, 1 << 16, 0)
  try:
    record = json.loads(data) if data.strip() else None
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None
  return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
  if not record:
    return 'another process (its record is being written)'
  return (f"pid {record.get('pid')} on host {record.get('host')} (started "
          f"{record.get('started')}: {record.get('command')})")


def acquire(workdir: str | pathlib.Path) -> None:
  """Takes `<workdir>/run.lock` for this process until it exits (or `release`); taking it again
  from the same process is a no-op. Raises WorkdirInUseError naming the live holder."""
  if '://' in str(workdir):
    logging.warning('%s: no lock on object storage (it has no flock); nothing stops a second '
                    'run from writing to this workdir at the same time', workdir)
    return
  path = pathlib.Path(workdir).absolute() / LOCK_FILE
  if str(path) in _held:
    return
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _read_record(fd)
    os.close(fd)
    raise WorkdirInUseError(
        f'{path.parent} is in use by {_describe(holder)}; wait for that run to end (or stop '
        'it), or give another --workdir') from None
  except OSError as e:
    os.close(fd)
    logging.warning('%s: cannot lock (%s); nothing stops a second run from writing to this '
                    'workdir at the same time', path, e)
    return
  left = _read_record(fd)
  if left:
    logging.warning('%s: took over the lock left by %s, which is no longer running', path,
                    _describe(left))
  record = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'command': ' '.join(sys.argv)}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(record).encode(), 0)
  os.fsync(fd)
  if not _held:
    atexit.register(_release_all)
  _held[str(path)] = fd


def release(workdir: str | pathlib.Path) -> None:
  """Clears this process's record and drops the lock (no-op if not held)."""
  fd = _held.pop(str(pathlib.Path(workdir).absolute() / LOCK_FILE), None)
  if fd is not None:
    os.ftruncate(fd, 0)
    os.close(fd)


def _release_all() -> None:
  for path in list(_held):
    release(pathlib.Path(path).parent)


def acquire_for_run(workdir: str | pathlib.Path) -> None:
  """`acquire` on process 0; every process of a multi-host run raises the same error."""
  import jax
  message = ''
  if jax.process_index() == 0:
    try:
      acquire(workdir)
    except WorkdirInUseError as e:
      message = str(e)
  message = broadcast_text(message)
  if message:
    raise WorkdirInUseError(message)


def broadcast_text(message: str) -> str:
  """Process 0's `message` on every process (up to 2048 bytes); itself in a single process."""
  import jax
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return message
  raw = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = message.encode()[:_MESSAGE_BYTES]
  raw[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  raw = np.asarray(multihost_utils.broadcast_one_to_all(raw))
  return raw.tobytes().rstrip(b'\0').decode(errors='replace')

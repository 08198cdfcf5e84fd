"""A small real file system for full-disk tests: a tmpfs of a few hundred KiB that truly fills
(ENOSPC from the kernel), not a mock. Needs mount permission (root); skips with the reason
otherwise."""
import contextlib
import pathlib
import subprocess

import pytest


@contextlib.contextmanager
def mounted(path: pathlib.Path, size_kib: int):
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kib}k', 'tmpfs', str(path)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs for the full-disk test: {r.stderr.strip() or r.returncode}')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)


def fill(path: pathlib.Path, leave_bytes: int = 0) -> None:
  """Writes a filler file until the file system has at most `leave_bytes` left."""
  import os
  st = os.statvfs(path)
  free = st.f_bavail * st.f_frsize
  with open(path / 'filler', 'wb') as f:
    try:
      f.write(b'\0' * max(0, free - leave_bytes))
    except OSError:
      pass

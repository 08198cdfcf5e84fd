"""A fake Google Cloud Storage for tests: `gs://bucket/path` is the local folder
`<root>/bucket/path`, for etils.epath (every file our code and orbax's metadata touch) and for
tensorstore (orbax's array data), while orbax still takes its gs:// code paths (commit files
instead of renames, the GCS kvstore spec). Nothing of axturbo is replaced.

In a test: `with fake_gcs.installed(tmp_path): ...`. Around a script (the real CLI in a
subprocess): `python -m tests.fake_gcs ROOT train.py --workdir gs://bucket/run ...`.
"""
import atexit
import contextlib
import os
import runpy
import sys
from unittest import mock

from etils.epath import testing as epath_testing


@contextlib.contextmanager
def installed(root):
  root = os.path.abspath(os.fspath(root))

  def local(p):
    s = os.fspath(p)
    return os.path.join(root, s[len('gs://'):]) if s.startswith('gs://') else s

  def remote(p):
    s = os.fspath(p)
    return 'gs://' + s[len(root) + 1:] if s.startswith(root + os.sep) else s

  one = lambda fn, p, *a, **k: fn(local(p), *a, **k)
  two = lambda fn, p, dst, *a, **k: fn(local(p), local(dst), *a, **k)

  def glob(fn, pattern):
    return [remote(x) for x in fn(local(pattern))]

  def walk(fn, top, **kw):
    for d, dirs, files in fn(local(top), **kw):
      yield remote(d), dirs, files

  from orbax.checkpoint._src.path import gcs_utils
  with contextlib.ExitStack() as stack:
    stack.enter_context(epath_testing.mock_epath(
        open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
        rmtree=one, stat=one, copy=two, rename=two, replace=two, glob=glob, walk=walk))
    # tensorstore's GCS driver -> its file driver on the same folder; no hierarchical
    # namespace (that check asks the GCS API).
    stack.enter_context(mock.patch.object(
        gcs_utils, 'get_kvstore_for_gcs', lambda p: {'driver': 'file', 'path': local(p)}))
    stack.enter_context(mock.patch.object(
        gcs_utils, 'is_hierarchical_namespace_enabled', lambda p: False))
    yield root


if __name__ == '__main__':
  _root, script, *args = sys.argv[1:]
  with installed(_root):
    sys.argv = [script, *args]
    try:
      runpy.run_path(script, run_name='__main__')
    finally:
      atexit._run_exitfuncs()   # the script's exit uploads, while gs:// is still the fake

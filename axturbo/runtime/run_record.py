"""The record of a run, written into its workdir when train.py or distill.py starts.

`<workdir>/config.json` is the resolved config of the latest start. `<workdir>/run_record.json`
holds what else decides a result: package versions, the devices and the mesh, the git commit
of the code (when it runs from a checkout), a parameter overview (per top-level module: count
and bytes), and the config changes accepted on resume. Both are written whole (a `.partial`
file renamed into place), by process 0 only, to a local folder or an etils.epath URL.

A resume (the workdir holds a checkpoint) under a different `model.*` config stops with one
line naming the fields: the checkpoint's arrays belong to the recorded model, and a changed
field that keeps every shape (`model.time_shift`, a codec's normalisation) would resume
silently into a different model. Every other field may change (steps, logging and checkpoint
cadence, learning rates, eval and profile settings, data, mesh: checkpoints restore onto any
mesh); each change is logged and kept in `run_record.json`.
"""
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any

from absl import logging

CONFIG_FILE = 'config.json'
RECORD_FILE = 'run_record.json'
# Config sections whose change refuses a resume (see the module docstring).
GUARDED = ('model',)
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'ml-collections',
            'grain', 'etils', 'tensorboardX')
_REPO = pathlib.Path(__file__).resolve().parent.parent.parent


def config_json(config) -> dict:
  """The config as JSON values (tuples become lists), as `config.json` holds it."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(flatten(v, f'{prefix}.{k}' if prefix else str(k)))
  return out


def config_changes(recorded: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """[(dotted field, recorded value, current value)] of every field that differs; a field only
  one side has shows `<absent>` on the other."""
  a, b = flatten(recorded), flatten(current)
  missing = '<absent>'
  return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing)]


def guarded(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
  return [c for c in changes if c[0].split('.')[0] in GUARDED]


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + '...'


def describe(changes: list[tuple[str, Any, Any]]) -> str:
  return ', '.join(f'{k} {_short(a)} -> {_short(b)}' for k, a, b in changes)


def package_versions() -> dict[str, str | None]:
  from importlib import metadata
  out = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def git_state(repo: pathlib.Path = _REPO) -> dict | None:
  """{'commit', 'dirty'} of the checkout the code runs from; None outside a git checkout (an
  installed wheel) or without git."""
  def git(*args):
    return subprocess.run(['git', '-C', str(repo), *args], capture_output=True, text=True,
                          timeout=20, check=True).stdout.strip()
  try:
    commit = git('rev-parse', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return None
  return {'commit': commit, 'dirty': dirty}


def parameter_overview(params: Any) -> dict[str, dict[str, int]]:
  """{top-level module: {'count', 'bytes'}} of a parameter tree (arrays, ShapeDtypeStructs or
  flax boxes of them), with a 'total' entry."""
  import jax
  import numpy as np
  out = {}
  for name, sub in params.items():
    leaves = [x for x in jax.tree.leaves(sub) if hasattr(x, 'shape')]
    out[str(name)] = {'count': int(sum(np.prod(x.shape, dtype=np.int64) for x in leaves)),
                      'bytes': int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                                       for x in leaves))}
  out['total'] = {k: sum(v[k] for v in out.values()) for k in ('count', 'bytes')}
  return out


def model_parameters(config) -> Any:
  """The abstract parameter tree of `config.model` (shapes only: nothing is allocated)."""
  import jax
  from flax import linen as nn

  from axturbo.models import audiox
  model = audiox.build_model(config.model)
  return nn.meta.unbox(jax.eval_shape(
      lambda: audiox.init_params(model, config.model, jax.random.key(0))))


def devices(mesh) -> dict:
  import jax
  d = jax.devices()
  return {'platform': d[0].platform, 'kind': d[0].device_kind, 'count': len(d),
          'local_count': jax.local_device_count(), 'processes': jax.process_count(),
          'mesh': {str(k): int(v) for k, v in mesh.shape.items()}}


def has_checkpoint(workdir) -> bool:
  """Whether `workdir` holds a step checkpoint (a run to resume)."""
  ckpt = workdir / 'checkpoints'
  return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def _write_whole(path, text: str) -> None:
  tmp = path.with_name(path.name + '.partial')
  tmp.write_text(text)
  tmp.replace(path)  # local: os.replace, atomic; a URL: the object appears whole either way


def check_resume(workdir, config) -> list[tuple[str, Any, Any]]:
  """The changes of `config` from the one recorded in `workdir` (all fields). Raises
  ValueError naming the changed `model.*` fields when the workdir holds a checkpoint. Every
  process reads; process 0's outcome is the one every process raises."""
  import jax

  from axturbo.runtime import workdir_lock
  changes, message = [], ''
  path = workdir / CONFIG_FILE
  if jax.process_index() == 0 and path.is_file():
    try:
      recorded = json.loads(path.read_text())
    except ValueError as e:
      message = (f'{path}: not JSON ({e}); it records the config this workdir was started '
                 'with: restore it, or use a new workdir')
    else:
      changes = config_changes(recorded, config_json(config))
      bad = guarded(changes)
      if bad and has_checkpoint(workdir):
        message = (f'{workdir} was started with a different model config, and its checkpoints '
                   f'hold that model: {describe(bad)}; use a new workdir, or the recorded '
                   f'config ({path})')
  message = workdir_lock.broadcast_text(message)
  if message:
    raise ValueError(message)
  return changes


def record_start(workdir, config, mesh, kind: str) -> dict | None:
  """Checks a resume (`check_resume`), then writes `config.json` and `run_record.json` (process
  0) and logs the accepted changes. Returns the record written (None on other processes)."""
  import jax
  changes = check_resume(workdir, config)
  if changes:
    logging.info('config changed since the recorded start (allowed): %s', describe(changes))
  if jax.process_index() != 0:
    return None
  record_path = workdir / RECORD_FILE
  earlier = []
  if record_path.is_file():
    try:
      earlier = json.loads(record_path.read_text()).get('changes', [])
    except (ValueError, AttributeError):
      logging.warning('%s unreadable; its list of earlier config changes starts over',
                      record_path)
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
  params = parameter_overview(model_parameters(config))
  record = {
      'kind': kind, 'started': now, 'command': [os.path.basename(sys.argv[0]), *sys.argv[1:]],
      'packages': package_versions(), 'devices': devices(mesh), 'git': git_state(),
      'parameters': params,
      'changes': earlier + [{'at': now, 'field': k, 'was': a, 'now': b} for k, a, b in changes],
  }
  _write_whole(workdir / CONFIG_FILE, json.dumps(config_json(config), indent=1, sort_keys=True))
  _write_whole(record_path, json.dumps(record, indent=1))
  git = record['git']
  logging.info('run record in %s: %s %d x %s, mesh %s, %s parameters (%.1f MB), %s', record_path,
               record['devices']['platform'], record['devices']['count'],
               record['devices']['kind'], record['devices']['mesh'],
               f'{params["total"]["count"]:,}', params['total']['bytes'] / 1e6,
               f'git {git["commit"][:12]}{" (dirty)" if git["dirty"] else ""}' if git
               else 'no git checkout')
  return record

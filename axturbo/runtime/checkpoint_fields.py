"""Type and range checks of a checkpoint's JSON files, on load (model_config.json, meta.json).

Both are files a user can edit or damage; a bad field must stop the load with one line naming
the file and the field, not build another network or fail later as a TypeError.
"""
import math
import pathlib

from axturbo.models import fields

KINDS = ('student', 'teacher', 'lora')   # 'lora': an adapter file (runtime/lora.py)
# meta.json fields written by train.py, distill.py and the converter: name -> (types, check).
_COUNT = ((int,), lambda v: v >= 0, '>= 0')
_TEXT_OR_NULL = ((str, type(None)), None, '')
META_FIELDS = {
    'kind': ((str,), lambda v: v in KINDS, f'one of {KINDS}'),
    'step': _COUNT, 'updates': _COUNT, 'student_updates': _COUNT, 'fake_updates': _COUNT,
    'skipped_steps': _COUNT,
    'num_steps': ((int,), lambda v: v >= 1, '>= 1'),
    'ema': ((bool,), None, ''),
    'config_hash': ((str,), None, ''),
    'data': ((dict,), None, ''),
    'schedule': ((str,), None, ''),
    'teacher': ((str,), None, ''),
    **{k: _TEXT_OR_NULL for k in ('converted_from', 'network', 'vae', 't5', 'clip',
                                   'synchformer', 'official_config')},
}
_TYPE_NAMES = {int: 'an integer', bool: 'true or false', str: 'a string', dict: 'an object',
               type(None): 'null', float: 'a number'}


def check_model_config(config: dict, path: pathlib.Path) -> None:
  """Raises ValueError naming `path` and every bad field of a loaded model_config.json."""
  problems = fields.check(config)
  if problems:
    raise ValueError(f'{path}: {"; ".join(problems)}')


def check_meta(meta: dict, path: pathlib.Path) -> None:
  """Raises ValueError naming `path` and the first bad known field of a loaded meta.json.
  Fields it does not know are provenance and pass."""
  for key, (types, ok, allowed) in META_FIELDS.items():
    if key not in meta:
      continue
    value = meta[key]
    typed = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if isinstance(value, float) and not math.isfinite(value):
      typed = False
    if not typed:
      want = ' or '.join(_TYPE_NAMES[t] for t in types)
      raise ValueError(f'{path}: field {key!r} must be {want}, got {value!r}')
    if ok is not None and not ok(value):
      raise ValueError(f'{path}: field {key!r} must be {allowed}, got {value!r}')

"""Type and range of every field of a `config.model` section.

A checkpoint's model_config.json is data a user can edit. Read unchecked, `trunk.depth` 1 over
2-layer weights or -1 builds another network (or none), and a wrong-typed field fails as a
TypeError deep inside a module after the weights are read. `check` returns one line per bad
field, naming it.

The types come from the Flax modules each section is spread into (`audiox.build_model`), so a
new module field is checked without a second list here; only the fields that are no module's
(the top level, `text`, `audio_prompt.encoder`) and the ranges are written out below.
"""
import dataclasses
import math
import typing
from typing import Any

import ml_collections as mlc

from axturbo.models import audio_prompt
from axturbo.models import clip
from axturbo.models import codec
from axturbo.models import disc_head
from axturbo.models import maf
from axturbo.models import mel_codec
from axturbo.models import mmdit
from axturbo.models import patch_codec
from axturbo.models import synchformer
from axturbo.models import t5
from axturbo.models import vae
from axturbo.models import video_cond

# Section -> the module its fields are spread into (audiox.build_model, codec.build_codec).
MODULES = {
    't5': t5.T5Conditioner, 'clip': clip.CLIPVisionTower, 'video': video_cond.VideoConditioner,
    'maf': maf.MAFBlock, 'trunk': mmdit.MMDiT, 'disc': disc_head.DiscriminatorHeads,
    'vae': vae.OobleckVAE, 'patch': patch_codec.PatchCodec, 'mel': mel_codec.MelCodec,
    'synchformer': synchformer.Synchformer, 'audio_prompt': audio_prompt.AudioPromptConditioner,
}
# Fields set by build_model itself, never by the config.
_SET_BY_BUILD = {'dtype', 'attention_impl', 'codec', 'sample_rate', 'parent', 'name'}
# Fields that are no module field.
_OWN = {
    '': dict(sample_rate=int, audio_samples=int, prompt_samples=int, video_fps=float,
             cond_dim=int, dtype=str, time_shift=float, codec=str, attention_impl=str,
             clip_dir=str),
    'text': dict(tokenizer=str, tokenizer_dir=str, max_length=int, vocab=typing.Any),
    'audio_prompt': dict(encoder=str),
}
_CHOICES = {
    'dtype': ('float32', 'bfloat16', 'float16'), 'codec': codec.CODECS,
    'text.tokenizer': ('hf', 'byte', 'word'), 'audio_prompt.encoder': ('vae', 'codec'),
    'attention_impl': ('', 'xla', 'cudnn'),
}
# (low, high, low inclusive): ints default to >= 1, floats to finite.
_RANGES = {
    'time_shift': (0.0, math.inf, False), 'maf.dropout': (0.0, 1.0, True),
    'audio_prompt.mask_ratio_start': (0.0, 1.0, True),
    'audio_prompt.mask_ratio_end': (0.0, 1.0, True), 'disc.negative_slope': (0.0, math.inf, True),
    'trunk.rope_theta': (0.0, math.inf, False), 'video_fps': (0.0, math.inf, False),
}
# Conditioners may be cut to their embeddings (configs/tiny.py: a 0-layer T5).
_INT_MIN_0 = {'mel.gl_iters', 'mel.nnls_iters', 't5.num_layers', 'clip.num_layers',
              'maf.num_layers', 'video.depth', 'synchformer.depth'}


def _hints(module) -> dict[str, Any]:
  hints = typing.get_type_hints(module)
  return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(module)
          if f.init and f.name not in _SET_BY_BUILD}


def _required(module) -> set[str]:
  return {f.name for f in dataclasses.fields(module) if f.init and f.name not in _SET_BY_BUILD
          and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _type_error(value, hint) -> str | None:
  """None when `value` (as JSON gives it) fits `hint`, else what was expected."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any or hint is typing.Any:
    return None
  if origin in (typing.Union, getattr(__import__('types'), 'UnionType', None)):
    errors = [_type_error(value, a) for a in args]
    return None if any(e is None for e in errors) else ' or '.join(e for e in errors if e)
  if hint is type(None):
    return None if value is None else 'null'
  if hint is bool:
    return None if isinstance(value, bool) else 'true or false'
  if hint is int:
    return None if isinstance(value, int) and not isinstance(value, bool) else 'an integer'
  if hint is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else 'a finite number'
  if hint is str:
    return None if isinstance(value, str) else 'a string'
  if origin in (tuple, list, typing.Sequence) or hint in (tuple, list) or (
      origin is not None and getattr(origin, '__name__', '') == 'Sequence'):
    if not isinstance(value, (list, tuple)):
      return 'a list'
    elem = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else None
    if elem is not None:
      for v in value:
        if (e := _type_error(v, elem)) is not None:
          return f'a list of {e.removeprefix("a ").removeprefix("an ")}s'
    return None
  return None  # dtypes, callables, ...: not JSON-typed, nothing to check


def _range_error(name: str, value, hint) -> str | None:
  if isinstance(value, (list, tuple)):
    for v in value:
      if (e := _range_error(name, v, int if isinstance(v, int) else float)) is not None:
        return e
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  if name in _RANGES:
    low, high, inclusive = _RANGES[name]
    if not ((value >= low if inclusive else value > low) and value <= high):
      return f'must lie in {"[" if inclusive else "("}{low:g}, {high:g}]'
    return None
  if name.endswith('eps') and value <= 0:
    return 'must be > 0'
  if isinstance(value, int) and hint is not float:
    low = 0 if name in _INT_MIN_0 else 1
    if value < low:
      return f'must be >= {low}'
  return None


def _check_field(name: str, value, hint) -> str | None:
  if (e := _type_error(value, hint)) is not None:
    return f'model.{name} must be {e}, got {value!r}'
  if name in _CHOICES and value not in _CHOICES[name]:
    return f'model.{name} must be one of {_CHOICES[name]}, got {value!r}'
  if (e := _range_error(name, value, hint)) is not None:
    return f'model.{name} {e}, got {value!r}'
  return None


def check(m: mlc.ConfigDict | dict) -> list[str]:
  """Problems with the fields of a `config.model` section, one line each ([] if none)."""
  m = m.to_dict() if isinstance(m, mlc.ConfigDict) else dict(m)
  problems = []
  for name, value in m.items():
    if name in MODULES or name in _OWN and name:
      if not isinstance(value, dict):
        problems.append(f'model.{name} must be an object of fields, got {value!r}')
        continue
      module = MODULES.get(name)
      hints = {**(_hints(module) if module else {}), **_OWN.get(name, {})}
      for key, v in value.items():
        if key not in hints:
          problems.append(f'model.{name}.{key} is not a field of model.{name} (fields: '
                          f'{", ".join(sorted(hints))})')
        elif (e := _check_field(f'{name}.{key}', v, hints[key])) is not None:
          problems.append(e)
      if module is not None and name in ('t5', 'clip', 'video', 'maf', 'trunk'):
        for key in sorted(_required(module) - set(value)):
          problems.append(f'model.{name}.{key} is missing')
    elif name in _OWN['']:
      if (e := _check_field(name, value, _OWN[''][name])) is not None:
        problems.append(e)
    else:
      problems.append(f'model.{name} is not a model config field')
  return problems

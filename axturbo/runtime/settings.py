"""Range checks of the trainer settings both scripts share, run before anything is compiled.

A bad setting must stop the run in a second with one line naming the `--config.` field and what
it accepts: unchecked, a negative learning rate trains by gradient ascent and exports the
result, `total_steps` 0 exports the random initial weights, and `checkpoint_every` 0 compiles
for a minute before a ZeroDivisionError.

`check_optimizer`, `check_ema` and `check_loop` check one section each (`optimizer_config()`,
an EMA section, and the loop fields of `config.train` / `config.distill`); the trainers' own
fields are checked next to their steps (`train.state.check_train_config`,
`distill.state.check_distill_config`).
"""
import math
from typing import Any, Sequence


def _bad(field: str, value: Any, allowed: str) -> ValueError:
  return ValueError(f'--config.{field}={value!r}: must be {allowed}')


def number(section, key: str, where: str, *, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False,
           integer: bool = False) -> None:
  """Raises naming `--config.<where>.<key>` unless it is a (finite) number in the range."""
  value = section[key]
  field = f'{where}.{key}'
  kind = 'an integer' if integer else 'a finite number'
  bounds = []
  if low is not None:
    bounds.append(f'{">" if low_open else ">="} {low:g}')
  if high is not None:
    bounds.append(f'{"<" if high_open else "<="} {high:g}')
  allowed = f'{kind} {" and ".join(bounds)}'.strip()
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _bad(field, value, allowed)
  if integer and not isinstance(value, int):
    raise _bad(field, value, allowed)
  if not math.isfinite(value):
    raise _bad(field, value, allowed)
  if low is not None and (value <= low if low_open else value < low):
    raise _bad(field, value, allowed)
  if high is not None and (value >= high if high_open else value > high):
    raise _bad(field, value, allowed)


def choice(section, key: str, where: str, choices: Sequence[str]) -> None:
  if section[key] not in choices:
    raise _bad(f'{where}.{key}', section[key], f'one of {tuple(choices)}')


def check_optimizer(o, where: str) -> None:
  """An `optimizer_config()` section (`train.optim`, `distill.student`, `distill.fake`)."""
  number(o, 'lr', where, low=0, low_open=True)
  number(o, 'b1', where, low=0, high=1, high_open=True)
  number(o, 'b2', where, low=0, high=1, high_open=True)
  number(o, 'eps', where, low=0, low_open=True)
  number(o, 'weight_decay', where, low=0)
  choice(o, 'schedule', where, ('inverse', 'constant', 'cosine'))
  number(o.inverse, 'inv_gamma', f'{where}.inverse', low=0, low_open=True)
  number(o.inverse, 'power', f'{where}.inverse', low=0)
  number(o.inverse, 'warmup', f'{where}.inverse', low=0, high=1, high_open=True)
  number(o, 'warmup_steps', where, low=0, integer=True)
  number(o, 'final_lr_fraction', where, low=0, high=1)
  number(o, 'grad_clip_norm', where, low=0)


def check_ema(e, where: str) -> None:
  """An EMA section (`train.ema`, `distill.ema`): ema_pytorch's beta, power, warm-up."""
  number(e, 'beta', where, low=0, high=1)
  number(e, 'power', where, low=0, low_open=True)
  number(e, 'update_after_step', where, low=0, integer=True)


def check_loop(section, where: str) -> None:
  """The loop fields of `config.train` / `config.distill` (`loop.run_steps`)."""
  number(section, 'total_steps', where, low=1, integer=True)
  number(section, 'log_every', where, low=1, integer=True)
  number(section, 'checkpoint_every', where, low=1, integer=True)
  number(section, 'eval_every', where, low=0, integer=True)
  number(section, 'eval_sample_steps', where, low=0, integer=True)
  number(section, 'eval_event_clips', where, low=0, integer=True)
  steps = tuple(section.eval_event_steps)
  if section.eval_event_clips and (not steps or any(
      isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps)):
    raise ValueError(f'{where}.eval_event_steps={steps}: one or more step counts >= 1')
  number(section, 'keep_checkpoints', where, low=1, integer=True)
  number(section, 'peak_flops_per_device', where, low=0, low_open=True)
  choice(section, 'data_source', where, ('pipeline', 'synthetic'))

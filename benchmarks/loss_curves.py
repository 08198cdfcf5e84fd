"""Plots the flow-matching loss of several train.py runs against wall time and step.

  python -m benchmarks.loss_curves --out docs/images/tiny_runs.png --logs NAME=train.log[,NAME=...]

Reads the step lines that `axturbo.train.step.Reporter` logs ("step N | loss X | ...") and their
absl timestamps; wall time counts from the first step line. Not part of the library.
"""
import datetime
import re
import sys

import matplotlib
from absl import app
from absl import flags

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

_OUT = flags.DEFINE_string('out', None, 'The PNG to write.', required=True)
_LOGS = flags.DEFINE_list('logs', None, 'NAME=path/to/train.log, one per run.', required=True)

_LINE = re.compile(r'^I\d{4} (\d\d:\d\d:\d\d\.\d+) .*\] step +(\d+) \| loss ([0-9.eE+-]+)')


def read_log(path: str) -> tuple[list[float], list[int], list[float]]:
  """(seconds since the first step line, steps, losses) of one log."""
  times, steps, losses = [], [], []
  for line in open(path, encoding='utf-8'):
    match = _LINE.match(line)
    if match:
      clock = datetime.datetime.strptime(match.group(1), '%H:%M:%S.%f')
      times.append(clock.hour * 3600 + clock.minute * 60 + clock.second
                   + clock.microsecond / 1e6)
      steps.append(int(match.group(2)))
      losses.append(float(match.group(3)))
  if not steps:
    raise ValueError(f'{path}: no "step N | loss X" lines')
  return [t - times[0] for t in times], steps, losses


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]} (runs go in --logs)')
  fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
  for run in _LOGS.value:
    name, sep, path = run.partition('=')
    if not sep:
      sys.exit(f'error: --logs entry {run!r} is not NAME=path/to/train.log')
    times, steps, losses = read_log(path)
    ax_step.plot(steps, losses, label=name)
    ax_time.plot([t / 60 for t in times], losses, label=name)
  for ax, xlabel in ((ax_step, 'step'), (ax_time, 'minutes since the first logged step')):
    ax.set_xlabel(xlabel)
    ax.set_ylabel('flow-matching loss')
    ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(_OUT.value, dpi=100)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)

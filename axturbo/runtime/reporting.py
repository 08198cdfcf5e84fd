"""Host-side observability of a training loop: the periodic log line, TensorBoard events, MFU,
the loss-curve PNG. A trainer subclasses `Reporter` to say what its metrics are."""
import atexit
import hashlib
import os
import pathlib
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

# Local stand-ins of files in a URL workdir: {local file or folder: its URL}.
_UPLOADS: dict[pathlib.Path, epath.Path] = {}


def local_copy(path) -> pathlib.Path:
  """`path` itself when local. For a URL (gs://bucket/run/train.log), a local file or folder
  that `upload` copies there (every log line, at exit): logs and TensorBoard event files are
  appended to, which a bucket does not allow. An existing remote file is fetched first, so a
  resumed run appends to it. Only the primary host uploads."""
  if '://' not in os.fspath(path):
    return pathlib.Path(path)
  remote = epath.Path(os.fspath(path))
  key = hashlib.sha256(os.fspath(path).encode()).hexdigest()[:16]
  local = pathlib.Path(tempfile.gettempdir()) / 'axturbo-uploads' / key / remote.name
  local.parent.mkdir(parents=True, exist_ok=True)
  if remote.is_file() and not local.exists():
    remote.copy(local)
  if jax.process_index() == 0:
    if not _UPLOADS:
      atexit.register(upload)
    _UPLOADS[local] = remote
  return local


def upload() -> None:
  """Copies every `local_copy` file (or folder's files) to its URL."""
  for local, remote in _UPLOADS.items():
    files = [local] if local.is_file() else [p for p in local.rglob('*') if p.is_file()]
    for f in files:
      dst = remote / f.relative_to(local) if f != local else remote
      dst.parent.mkdir(parents=True, exist_ok=True)
      epath.Path(f).copy(dst, overwrite=True)


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled (per-device SPMD) program from XLA's cost analysis."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


class Reporter:
  """Collects per-step metrics (device arrays, fetched only at log time, so the host does not
  stall the device every step), prints one line per `every` steps, writes TensorBoard events and
  a loss curve.

  flops_per_device: FLOPs of one step on one device; with `peak_flops_per_device` gives MFU.
  total_steps: for the ETA. data_iter: its `stats` (skipped samples) join each line.
  """

  def __init__(self, workdir: str | os.PathLike, every: int, global_batch: int,
               flops_per_device: float | None, peak_flops_per_device: float,
               first_step: int = 0, total_steps: int | None = None, data_iter: Any = None):
    self.workdir = epath.Path(workdir)
    self.every, self.global_batch = max(int(every), 1), global_batch
    self.flops, self.peak = flops_per_device, peak_flops_per_device
    self.total_steps, self.data_iter = total_steps, data_iter
    self.pending: list[tuple[int, dict]] = []
    self.history: list[tuple[int, float]] = []
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # imported here: only the primary host writes
      self.writer = SummaryWriter(str(local_copy(self.workdir / 'tensorboard')))
    self._t0, self._step0 = time.perf_counter(), first_step
    # The loss curve of the steps before a resume: kept beside the curve, so that the PNG a
    # resumed run draws starts at step 1, not at the resume step (steps after `first_step`
    # were not checkpointed and are run again).
    self._history_file = local_copy(self.workdir / 'loss_history.json')  # a URL: uploaded
    self._earlier = [(int(s), float(v)) for s, v in _read_history(self._history_file)
                     if s <= first_step] if self.writer is not None else []

  def record(self, step: int, metrics: dict) -> None:
    """`step`: the number of steps done after this one."""
    self.pending.append((step, metrics))
    if step % self.every == 0:
      self.flush()

  def flush(self) -> None:
    if not self.pending:
      return
    rows = [(s, jax.tree.map(lambda x: np.asarray(jax.device_get(x)), m)) for s, m in self.pending]
    self.pending = []
    now = time.perf_counter()
    step = rows[-1][0]
    steps_per_s = (step - self._step0) / max(now - self._t0, 1e-9)
    self._t0, self._step0 = now, step
    scalars, line, skipped = self.summarize(rows)
    scalars.update({'perf/steps_per_s': steps_per_s,
                    'perf/samples_per_s': steps_per_s * self.global_batch})
    mfu = ''
    if self.flops and self.peak:
      scalars['perf/mfu'] = self.flops * steps_per_s / self.peak
      mfu = f' | mfu {100 * scalars["perf/mfu"]:.1f}%'
    data = data_stats(self.data_iter)
    skips = ''
    if data:
      scalars.update({'data/skipped_samples': data['skipped'],
                      'data/skip_fraction': data['skip_fraction']})
      if data['skipped']:
        skips = (f' | skipped {data["skipped"]} samples '
                 f'({100 * data["skip_fraction"]:.1f} %)')
    eta = ''
    if self.total_steps and step < self.total_steps:
      eta = f' | eta {format_duration((self.total_steps - step) / max(steps_per_s, 1e-9))}'
    logging.info('step %d | %s | %.2f steps/s | %.1f samples/s%s%s%s%s', step, line,
                 steps_per_s, scalars['perf/samples_per_s'], mfu,
                 f' | SKIPPED {skipped} non-finite steps' if skipped else '', skips, eta)
    if self.writer is not None:
      for k, v in scalars.items():
        self.writer.add_scalar(k, v, step)
      _write_history(self._history_file, self._earlier + self.history)
      self.writer.flush()
      upload()

  def evaluated(self, step: int, scalars: dict[str, float], seconds: float,
                audio: dict[str, np.ndarray] | None = None, sample_rate: int = 0) -> None:
    """One line and the TensorBoard scalars of an in-training evaluation after `step` steps
    (runtime/evaluation.py), its mono clips as audio and their spectrograms as images; its
    `seconds` are left out of the next line's step rate."""
    from axturbo.runtime import evaluation
    self._t0 += seconds
    logging.info('eval step %d | %s%s | %.1f s', step,
                 ' | '.join(f'{k} {v:.5g}' for k, v in scalars.items()),
                 f' | {len(audio)} clips to TensorBoard' if audio else '', seconds)
    if self.writer is not None:
      for k, v in {**scalars, 'perf/eval_seconds': seconds}.items():
        self.writer.add_scalar(k, v, step)
      for k, clip in (audio or {}).items():
        self.writer.add_audio(k, clip, step, sample_rate=sample_rate)
        self.writer.add_image(f'{k}/spectrogram', evaluation.spectrogram_image(clip), step,
                              dataformats='HW')
      self.writer.flush()
      upload()

  def summarize(self, rows: list[tuple[int, dict]]) -> tuple[dict, str, int]:
    """Host metrics of the steps since the last line -> (TensorBoard scalars, the line's
    metric part, non-finite steps skipped); appends to `history` (the loss curve). Each
    trainer reports its own metrics (the `Reporter` of axturbo/train/step.py and axturbo/distill/step.py)."""
    raise NotImplementedError

  def close(self) -> epath.Path | None:
    """Flushes, closes TensorBoard and writes <workdir>/loss_curve.png (primary host)."""
    self.flush()
    if self.writer is None:
      return None
    self.writer.close()
    upload()
    return plot_loss(self._earlier + self.history, self.workdir / 'loss_curve.png')


def _read_history(path: pathlib.Path) -> list:
  """[(step, loss), ...] of earlier runs in this workdir; [] when none or unreadable (the
  curve then starts at the resume step, with a warning)."""
  import json
  if not path.is_file():
    return []
  try:
    return [(int(s), float(v)) for s, v in json.loads(path.read_text())]
  except (ValueError, TypeError, OSError) as e:
    logging.warning('%s unreadable (%s); the loss curve starts at this run', path, e)
    return []


def _write_history(path: pathlib.Path, history: list) -> None:
  import json
  tmp = path.with_name(path.name + '.partial')
  try:
    tmp.write_text(json.dumps(history))
    os.replace(tmp, path)
  except OSError:  # a full disk: the curve is a convenience, the run goes on
    tmp.unlink(missing_ok=True)


def format_duration(seconds: float) -> str:
  """12.3 -> '12 s', 754 -> '12 min 34 s', 7300 -> '2 h 1 min'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60} s'
  return f'{seconds // 3600} h {seconds % 3600 // 60} min'


def data_stats(data_iter: Any) -> dict:
  """The skip counters of a pipeline iterator (axturbo/data/pipeline.py); {} for sources
  without them (synthetic data)."""
  return dict(getattr(data_iter, 'stats', None) or {})


def skip_summary(skipped_steps: int, data: dict) -> str:
  """The final line's account of what was skipped: samples (bad data) and steps (non-finite
  updates) are different failures, so they are counted separately."""
  if not data:  # a source without skip counters (synthetic)
    return f'{skipped_steps} non-finite steps skipped'
  samples = (f'{data["skipped"]} of {data["seen"]} samples skipped '
             f'({100 * data["skip_fraction"]:.1f} %)')
  if data['skipped']:
    samples += '; worst: ' + ', '.join(f'{k} ({v}x)' for k, v in data['worst'].items())
  return f'{samples}; {skipped_steps} non-finite steps skipped'


def plot_loss(history: list[tuple[int, float]], path: epath.Path) -> epath.Path | None:
  if not history:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  steps, losses = np.array(history).T
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(steps, losses, lw=0.8, alpha=0.5, label='loss')
  k = max(len(losses) // 20, 1)
  if k > 1:
    smooth = np.convolve(losses, np.ones(k) / k, mode='valid')
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f'mean of {k}')
  ax.set_xlabel('step')
  ax.set_ylabel('flow-matching loss')
  if min(losses) > 0:
    ax.set_yscale('log')  # from-scratch losses span orders of magnitude
  ax.legend()
  fig.tight_layout()
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)
  return path

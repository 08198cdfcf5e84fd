"""The distillation log line and TensorBoard scalars (train.observe.Reporter, other metrics).

Student and fake steps report different metrics; each logged value is the mean over the steps
since the last line that reported it. The loss-curve PNG plots the fake model's flow-matching
loss (the one curve that should fall as the fake tracks the student).
"""
import time

import jax
import numpy as np
from absl import logging

from axturbo.train import observe

_LINE = (('loss_dm', 'dm %.4f'), ('loss_adv', 'adv %.3f'), ('loss_fake', 'fake %.4f'),
         ('loss_d', 'D %.3f'), ('logits_real', 'D(real) %.2f'), ('logits_fake', 'D(fake) %.2f'),
         ('g_abs_mean', '|g| %.3f'), ('v_teacher_rms', 'vT %.3f'), ('v_fake_rms', 'vF %.3f'),
         ('x0_std', 'x0 std %.3f'))


class Reporter(observe.Reporter):

  def flush(self) -> None:
    if not self.pending:
      return
    rows = [(s, jax.tree.map(lambda x: np.asarray(jax.device_get(x)), m)) for s, m in self.pending]
    self.pending = []
    now = time.perf_counter()
    step = rows[-1][0]
    steps_per_s = (step - self._step0) / max(now - self._t0, 1e-9)
    self._t0, self._step0 = now, step
    for s, m in rows:
      if 'loss_fake' in m:
        self.history.append((s, float(m['loss_fake'])))
    keys = sorted({k for _, m in rows for k in m})
    means = {k: float(np.mean([float(m[k]) for _, m in rows if k in m])) for k in keys}
    skipped = sum(int(not m[k]) for _, m in rows for k in ('student_finite', 'fake_finite')
                  if k in m)
    scalars = {f'distill/{k}': v for k, v in means.items()
               if k not in ('student_finite', 'fake_finite', 'target_index')}
    scalars.update({'perf/steps_per_s': steps_per_s,
                    'perf/samples_per_s': steps_per_s * self.global_batch,
                    'distill/skipped_nonfinite': skipped})
    if self.flops and self.peak:
      scalars['perf/mfu'] = self.flops * steps_per_s / self.peak
    parts = [fmt % means[k] for k, fmt in _LINE if k in means]
    logging.info('step %d | %s | %.2f steps/s%s', step, ' | '.join(parts), steps_per_s,
                 f' | SKIPPED {skipped} non-finite' if skipped else '')
    if self.writer is not None:
      for k, v in scalars.items():
        self.writer.add_scalar(k, v, step)
      self.writer.flush()

"""The distillation log line and TensorBoard scalars (runtime.observe.Reporter, its metrics).

Student and fake steps report different metrics; each logged value is the mean over the steps
since the last line that reported it. The loss-curve PNG plots the fake model's flow-matching
loss (the one curve that should fall as the fake tracks the student).
"""
import numpy as np

from axturbo.runtime import observe

_LINE = (('loss_dm', 'dm %.4f'), ('loss_adv', 'adv %.3f'), ('loss_fake', 'fake %.4f'),
         ('loss_d', 'D %.3f'), ('logits_real', 'D(real) %.2f'), ('logits_fake', 'D(fake) %.2f'),
         ('g_abs_mean', '|g| %.3f'), ('v_teacher_rms', 'vT %.3f'), ('v_fake_rms', 'vF %.3f'),
         ('x0_std', 'x0 std %.3f'))


class Reporter(observe.Reporter):

  def summarize(self, rows: list[tuple[int, dict]]) -> tuple[dict, str, int]:
    for s, m in rows:
      if 'loss_fake' in m:
        self.history.append((s, float(m['loss_fake'])))
    keys = sorted({k for _, m in rows for k in m})
    means = {k: float(np.mean([float(m[k]) for _, m in rows if k in m])) for k in keys}
    skipped = sum(int(not m[k]) for _, m in rows for k in ('student_finite', 'fake_finite')
                  if k in m)
    scalars = {f'distill/{k}': v for k, v in means.items()
               if k not in ('student_finite', 'fake_finite', 'target_index')}
    scalars['distill/skipped_nonfinite'] = skipped
    return scalars, ' | '.join(fmt % means[k] for k, fmt in _LINE if k in means), skipped

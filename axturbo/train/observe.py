"""The teacher's log line and TensorBoard scalars (runtime.observe.Reporter, the train metrics)."""
import numpy as np

from axturbo.runtime import observe


class Reporter(observe.Reporter):

  def summarize(self, rows: list[tuple[int, dict]]) -> tuple[dict, str, int]:
    """Host metrics of the steps since the last line -> (TensorBoard scalars, the line's
    metric part, non-finite steps skipped); appends to `history` (the loss curve)."""
    for s, m in rows:
      self.history.append((s, float(m['loss'])))
    last = rows[-1][1]
    mean_loss = float(np.mean([float(m['loss']) for _, m in rows]))
    skipped = sum(int(not m['finite']) for _, m in rows)
    scalars = {'train/loss': mean_loss, 'train/grad_norm': float(last['grad_norm']),
               'train/lr': float(last['lr']), 'train/latent_std': float(last['latent_std']),
               'train/skipped_nonfinite': skipped}
    line = (f'loss {mean_loss:.5f} | grad_norm {scalars["train/grad_norm"]:.3g} | '
            f'lr {scalars["train/lr"]:.3g}')
    return scalars, line, skipped

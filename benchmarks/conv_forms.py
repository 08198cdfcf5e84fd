r"""The trunk's kernel-3 convolutions in three forms, on this machine's default backend.

  python -m benchmarks.conv_forms [--batches 1,8] [--runs 30] [--widths 512,1536]

Per shape (B, 237 positions, C_in -> C_out; each width's attention-output and FFN shapes:
512 -> 512, 512 -> 1536, 1536 -> 512 and the official 1536 -> 1536, 1536 -> 4096,
4096 -> 1536), float32, random inputs:
  * `lax.conv` (`layers.same_conv1d`) on the (3, C_in, C_out) kernel (the training layout,
    and inference off CPU);
  * the shifted matmul: one (B*T, 3*C_in) @ (3*C_in, C_out) product over three shifted copies
    (the previous CPU form, kept here only as a reference);
  * Winograd F(2, 3), `layers.winograd_conv3` on filters converted beforehand, as the
    inference layout holds them (the CPU inference form).
Each form is jitted alone; the forms are called in alternation, `--runs` rounds, and the
median per form is printed, with lax.conv time / form time and the largest deviation from a
float64 numpy reference relative to the reference's largest magnitude.
"""
import statistics
import time

from absl import app
from absl import flags
import numpy as np

_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes.')
_WIDTHS = flags.DEFINE_list('widths', ['512', '1536'], 'Trunk widths (their FFN hidden: 1536, 4096).')
_RUNS = flags.DEFINE_integer('runs', 30, 'Alternating rounds (median per form).')
LENGTH = 237
HIDDEN = {512: 1536, 1536: 4096}


def shifted_matmul(x, kernel):
  import jax.numpy as jnp
  xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
  taps = jnp.concatenate([xp[:, i:i + x.shape[1]] for i in range(3)], axis=-1)
  return taps @ kernel.reshape(-1, kernel.shape[-1])


def main(argv):
  del argv
  import jax
  from axturbo.models import layers
  print(f'backend {jax.default_backend()}, jax {jax.__version__}; ms per call, median of '
        f'{_RUNS.value} alternating rounds')
  print('B | C_in -> C_out | lax.conv | shifted matmul | Winograd | lax/shifted | lax/Winograd '
        '| rel. error lax, shifted, Winograd')
  rng = np.random.default_rng(0)
  for b in map(int, _BATCHES.value):
    for w in map(int, _WIDTHS.value):
      for c_in, c_out in ((w, w), (w, HIDDEN[w]), (HIDDEN[w], w)):
        x = rng.standard_normal((b, LENGTH, c_in)).astype(np.float32)
        k = (rng.standard_normal((3, c_in, c_out)) / np.sqrt(3 * c_in)).astype(np.float32)
        xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (0, 0)))
        exact = sum(xp[:, i:i + LENGTH] @ k[i].astype(np.float64) for i in range(3))
        forms = [(jax.jit(layers.same_conv1d), k), (jax.jit(shifted_matmul), k),
                 (jax.jit(layers.winograd_conv3), layers.winograd_filters(k))]
        args = [(jax.device_put(x), jax.device_put(a)) for _, a in forms]
        errs = [float(np.abs(np.asarray(f(*a)) - exact).max() / np.abs(exact).max())
                for (f, _), a in zip(forms, args)]
        times = [[] for _ in forms]
        for _ in range(_RUNS.value):
          for (f, _), a, ts in zip(forms, args, times):
            t0 = time.perf_counter()
            f(*a).block_until_ready()
            ts.append(1e3 * (time.perf_counter() - t0))
        med = [statistics.median(ts) for ts in times]
        print(f'{b} | {c_in} -> {c_out} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | '
              f'{med[0] / med[1]:.2f} | {med[0] / med[2]:.2f} | '
              + ', '.join(f'{e:.1e}' for e in errs), flush=True)


if __name__ == '__main__':
  app.run(main)

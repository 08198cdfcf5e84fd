"""End-to-end DMD on an exactly known teacher (docs/official.md), through the real loss, rollout
and schedule functions of `axturbo.distill.dmd`.

Teacher: the analytic rectified-flow velocity of N(mean, std^2) per dimension (16-D).
Fake: the same family with learnable (mu, log_s), fitted by flow matching (Eqs. 11-12) on
stop-gradient student samples. Student: a 1-step generator x = b + a * eps, expressed as a
velocity at t = 1 (v = z - (b + a z)) so that it goes through `student_rollout`.
Both updates use their own Adam state. The whole run is one jitted lax.scan.

  python -m benchmarks.dmd_toy            # prints the table of docs/research/distillation.md
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from axturbo import flow
from axturbo.distill import dmd

TARGET_MEAN, TARGET_STD, DIM = 1.5, 0.5, 16


def gaussian_velocity(mu: jax.Array, s: jax.Array, z: jax.Array, t: jax.Array) -> jax.Array:
  """E[eps - x0 | z_t] for x0 ~ N(mu, s^2) per dimension; z (B, D), t (B,). Non-singular at t=0:
  with r = z - (1-t) mu and q = (1-t)^2 s^2 + t^2, E[eps|z] = t r / q and
  E[x0|z] = mu + (1-t) s^2 r / q."""
  t = t[:, None]
  r = z - (1.0 - t) * mu
  q = (1.0 - t) ** 2 * s ** 2 + t ** 2
  return t * r / q - (mu + (1.0 - t) * s ** 2 * r / q)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  schedule: str = 'audiox'            # dmd.updates_at schedule
  normalizer: str = 'audiox'          # dmd.dmd_gradient normalizer
  student_lr: float = 1e-3
  fake_lr: float = 1e-2
  steps: int = 12000
  batch: int = 256
  student_steps_per_cycle: int = 5
  fake_steps_per_cycle: int = 1
  fake_updates_per_student_update: int = 5
  flip_sign: bool = False             # a deliberately wrong DMD sign, to show the test can fail
  seed: int = 0


def _student_fn(p):
  # x0 = z - 1 * v = b + a z at t = 1.
  return lambda z, t, cond: z - (p['b'] + p['a'] * z)


def _fake_fn(p):
  return lambda z, t, cond: gaussian_velocity(p['mu'], jnp.exp(p['log_s']), z, t)


def _teacher_fn(z, t, cond):
  return gaussian_velocity(jnp.float32(TARGET_MEAN), jnp.float32(TARGET_STD), z, t)


def _sample(p, noise):
  return dmd.student_rollout(_student_fn(p), noise, None, 0, None, timesteps=(1.0,))


def run_toy(c: ToyConfig):
  """Runs `c.steps` distillation steps; returns (student params, fake params, student params
  averaged over the last quarter of the steps). The stochastic Adam updates keep the student
  jittering around its equilibrium by a few percent; the average reads the equilibrium off.

  One compilation serves every config with the same normalizer, batch and cycle lengths
  (schedule, learning rates, steps, sign and seed are traced), so tests can afford several runs.
  """
  if c.schedule not in dmd.SCHEDULES:
    raise ValueError(f'schedule must be one of {dmd.SCHEDULES}, got {c.schedule!r}')
  static = (c.normalizer, c.batch, c.student_steps_per_cycle, c.fake_steps_per_cycle,
            c.fake_updates_per_student_update)
  dynamic = dict(dmd2=jnp.bool_(c.schedule == 'dmd2'), student_lr=jnp.float32(c.student_lr),
                 fake_lr=jnp.float32(c.fake_lr), steps=jnp.int32(c.steps),
                 sign=jnp.float32(-1.0 if c.flip_sign else 1.0), seed=jnp.uint32(c.seed))
  return _run(static, dynamic)


@functools.partial(jax.jit, static_argnums=0)
def _run(static, d):
  normalizer, batch, s_cycle, f_cycle, k_dmd2 = static
  student = dict(b=jnp.zeros(DIM), a=jnp.ones(DIM))        # starts at N(0, 1)
  fake = dict(mu=jnp.zeros(DIM), log_s=jnp.zeros(DIM))     # tracks the student's init
  opt_s, opt_f = optax.adam(d['student_lr']), optax.adam(d['fake_lr'])
  avg = jax.tree.map(jnp.zeros_like, student)
  state = (student, fake, opt_s.init(student), opt_f.init(fake), avg)
  base = jax.random.key(d['seed'])
  avg_from = d['steps'] - d['steps'] // 4

  def step(n, state):
    student, fake, os_, of_, avg = state
    k = jax.random.split(jax.random.fold_in(base, n), 5)
    noise = jax.random.normal(k[0], (batch, DIM))
    ax = dmd.updates_at(n, 'audiox', student_steps_per_cycle=s_cycle,
                        fake_steps_per_cycle=f_cycle)
    d2 = dmd.updates_at(n, 'dmd2', fake_updates_per_student_update=k_dmd2)
    do_student, do_fake = (jnp.where(d['dmd2'], b, a) for a, b in zip(ax, d2))
    x0_step = jax.lax.stop_gradient(_sample(student, noise))   # this step's samples

    def student_update(args):
      student, os_ = args
      t = flow.sample_times(k[1], batch)
      z = flow.renoise(x0_step, jax.random.normal(k[2], x0_step.shape), t)
      g, _ = dmd.dmd_gradient(_teacher_fn(z, t, None), _fake_fn(fake)(z, t, None), x0_step, z,
                              t, normalizer)
      g = d['sign'] * g
      grads = jax.grad(lambda p: dmd.distribution_matching_loss(_sample(p, noise), g))(student)
      upd, os_ = opt_s.update(grads, os_, student)
      return optax.apply_updates(student, upd), os_

    def fake_update(args):
      fake, of_ = args
      t = flow.sample_times(k[3], batch)
      grads = jax.grad(lambda p: dmd.fake_flow_matching_loss(
          _fake_fn(p), x0_step, jax.random.normal(k[4], x0_step.shape), t, None))(fake)
      upd, of_ = opt_f.update(grads, of_, fake)
      return optax.apply_updates(fake, upd), of_

    student, os_ = jax.lax.cond(do_student, student_update, lambda a: a, (student, os_))
    fake, of_ = jax.lax.cond(do_fake, fake_update, lambda a: a, (fake, of_))
    w = jnp.where(n >= avg_from, 1.0 / (d['steps'] - avg_from), 0.0)
    avg = dict(b=avg['b'] + w * student['b'], a=avg['a'] + w * jnp.abs(student['a']))
    return student, fake, os_, of_, avg

  student, fake, _, _, avg = jax.lax.fori_loop(0, d['steps'], step, state)
  return student, fake, avg


def summaries(c: ToyConfig) -> tuple[tuple[float, float], tuple[float, float]]:
  """((mean, std) of the parameters averaged over the last quarter of the steps, (mean, std) of
  the final ones), each a mean over the 16 dimensions."""
  student, _, avg = run_toy(c)
  stats = lambda p: (float(jnp.mean(p['b'])), float(jnp.mean(jnp.abs(p['a']))))
  return stats(avg), stats(student)


def summary(c: ToyConfig) -> tuple[float, float]:
  """(student mean, student std), read off the last-quarter average."""
  return summaries(c)[0]


TABLE = (
    ToyConfig('dmd2', 'dmd2', 1e-2, 1e-2, 3000),
    ToyConfig('dmd2', 'audiox', 1e-2, 1e-2, 3000),
    ToyConfig('dmd2', 'audiox', 1e-3, 1e-3, 30000),
    ToyConfig('dmd2', 'audiox', 1e-2, 1e-3, 3000),
    ToyConfig('audiox', 'dmd2', 1e-2, 1e-2, 3000),
    ToyConfig('audiox', 'audiox', 1e-2, 1e-2, 3000),
    ToyConfig('audiox', 'audiox', 1e-2, 1e-2, 12000),
    ToyConfig('audiox', 'audiox', 3e-3, 3e-3, 10000),
    ToyConfig('audiox', 'audiox', 1e-3, 1e-3, 30000),
    ToyConfig('audiox', 'audiox', 5e-3, 1e-2, 3000),
    ToyConfig('audiox', 'audiox', 3e-3, 1e-2, 6000),
    ToyConfig('audiox', 'audiox', 2e-3, 1e-2, 6000),
    ToyConfig('audiox', 'dmd2', 1e-3, 1e-2, 8000),
    ToyConfig('audiox', 'audiox', 1e-3, 1e-2, 8000),
    ToyConfig('audiox', 'audiox', 1e-2, 1e-3, 3000),
    ToyConfig('dmd2', 'audiox', 1e-2, 1e-2, 1500, flip_sign=True),
)


def main():
  print(f'target mean {TARGET_MEAN} std {TARGET_STD}, {DIM}-D, batch 256, Adam')
  print('schedule | normalizer | lr student / fake | steps | sign | mean / std (final) | '
        'mean / std (last-quarter average)')
  for c in TABLE:
    (ma, sa), (m, s) = summaries(c)
    print(f'{c.schedule} | {c.normalizer} | {c.student_lr:g} / {c.fake_lr:g} | {c.steps} | '
          f'{"flipped" if c.flip_sign else "+"} | {m:.3f} / {s:.3f} | {ma:.3f} / {sa:.3f}',
          flush=True)


if __name__ == '__main__':
  main()

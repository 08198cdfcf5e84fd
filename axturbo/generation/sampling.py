"""Samplers: pure functions whose whole step loop is one compiled `lax.scan`.

Convention (docs/official.md, "Rectified flow"): z_t = t * eps + (1 - t) * x0, t = 1 is noise, the
network predicts v = eps - x0. Latents are (B, T, C); every noise is injectable so that a run can
be matched against the official sampler tensor for tensor.

Two samplers:
  * `sample_student`: the DMD student's denoise-renoise loop (official `sample_dmd`), no CFG.
  * `sample_euler`: the teacher's Euler ODE solver with classifier-free guidance (official
    `generate_diffusion_cond`, null condition = all-zero post-fusion tokens).

Both can keep known latent frames fixed (`known`, `known_mask`) for inpainting/continuation in
latent space; this is not something the official sampler does (see `generate.py`).
"""
from typing import Callable

import jax
import jax.numpy as jnp

from axturbo import flow

STUDENT_STEPS = (1, 2, 4)

# velocity_fn(z (B, T, C), t (B,)) -> v (B, T, C); the conditioning is closed over.
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
# cond_velocity_fn(z (B, T, C), t (B,), cond (B, L, D)) -> v (B, T, C).
CondVelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def check_student_steps(steps: int) -> None:
  """The student was distilled for 4 steps on `flow.time_grid(4, shift)`; 1 and 2 steps are
  sub-grids of the same schedule family; any other count is refused."""
  if steps not in STUDENT_STEPS:
    raise ValueError(f'the student sampler supports steps in {STUDENT_STEPS}, got {steps}')


def _keep(x: jax.Array, known: jax.Array | None, known_mask: jax.Array | None) -> jax.Array:
  if known is None:
    return x
  return jnp.where(known_mask, known.astype(x.dtype), x)


def _check_known(noise, known, known_mask):
  if (known is None) != (known_mask is None):
    raise ValueError('known and known_mask must be given together')
  if known is not None:
    if known.shape != noise.shape:
      raise ValueError(f'known must have the noise shape {noise.shape}, got {known.shape}')
    if known_mask.shape != noise.shape[:2] + (1,):
      raise ValueError(f'known_mask must be {noise.shape[:2] + (1,)} (B, T, 1), '
                       f'got {known_mask.shape}')


def sample_student(velocity_fn: VelocityFn, noise: jax.Array, renoise: jax.Array | None,
                   steps: int, *, shift: float = 1.0, known: jax.Array | None = None,
                   known_mask: jax.Array | None = None) -> jax.Array:
  """Few-step denoise-renoise sampling (official `sample_dmd`; Eq. 5 then Eq. 6).

  With t_i = flow.time_grid(steps, shift)[i] (official: shift 1, linspace(1, 0, steps + 1)):
  v = f(z, t_i); x0 = z - t_i v (Eq. 5); unless i is the last step,
  z = t_{i+1} eps_i + (1 - t_{i+1}) x0 (Eq. 6). Returns the last x0. NFE = steps.

  Args:
    velocity_fn: (B, T, C), (B,) -> (B, T, C).
    noise: initial z at t = 1, (B, T, C).
    renoise: fresh noise for each re-noising, (steps - 1, B, T, C); None only when steps == 1.
    steps: 1, 2 or 4.
    shift: the model's `time_shift` (the grid the student was distilled on).
    known, known_mask: optional (B, T, C) latents and (B, T, 1) bool; where the mask is set, each
      x0 estimate is replaced by `known`, so the result equals `known` there exactly.

  Returns:
    x0 (B, T, C) float32.
  """
  check_student_steps(steps)
  _check_known(noise, known, known_mask)
  want = (steps - 1,) + noise.shape
  if steps == 1 and renoise is None:
    renoise = jnp.zeros(want, jnp.float32)
  if renoise is None or renoise.shape != want:
    raise ValueError(f'renoise must be (steps - 1, B, T, C) = {want}, '
                     f'got {None if renoise is None else renoise.shape}')
  ts = flow.time_grid(steps, shift)
  # The last transition re-noises to t = 0, i.e. z = 0 * eps + 1 * x0 = x0 exactly, so one
  # uniform scan body covers every step (the padding noise is multiplied by exactly 0).
  eps = jnp.concatenate([renoise.astype(jnp.float32), jnp.zeros((1,) + noise.shape, jnp.float32)])
  b = noise.shape[0]

  def body(z, xs):
    t, t_next, eps_i = xs
    v = velocity_fn(z, jnp.full((b,), t, jnp.float32))
    x0 = _keep(flow.x0_from_velocity(z, v, jnp.full((b,), t)), known, known_mask)
    return flow.renoise(x0, eps_i, jnp.full((b,), t_next)), None

  z, _ = jax.lax.scan(body, noise.astype(jnp.float32), (ts[:-1], ts[1:], eps))
  return z


def sample_euler(velocity_fn: CondVelocityFn, noise: jax.Array, cond: jax.Array, steps: int,
                 cfg_scale: float = flow.OFFICIAL_CFG_SCALE, *, shift: float = 1.0,
                 known: jax.Array | None = None, known_mask: jax.Array | None = None
                 ) -> jax.Array:
  """Euler ODE solve on `flow.time_grid(steps, shift)` (official: shift 1, linspace(1, 0,
  steps + 1)) with classifier-free guidance.

  Each step: v = v_u + s (v_c - v_u) with v_u at all-zero conditioning, conditional and null
  rows batched as [cond, null] (one network call per step; NFE = 2 * steps, or steps at s = 1);
  then z <- z + (t_{i+1} - t_i) v.

  Args:
    velocity_fn: (B', T, C), (B',), (B', L, D) -> (B', T, C).
    noise: initial z at t = 1, (B, T, C).
    cond: post-fusion conditioning (B, L, D).
    steps: number of Euler steps (>= 1).
    cfg_scale: guidance scale (official default 6; exactly 1 disables the null pass).
    shift: the model's `time_shift` (the shift it was trained with).
    known, known_mask: optional (B, T, C) latents and (B, T, 1) bool; after each step the masked
      frames are set to the straight path t * noise + (1 - t) * known, so they end at `known`.

  Returns:
    z at t = 0, (B, T, C) float32.
  """
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  _check_known(noise, known, known_mask)
  ts = flow.time_grid(steps, shift)
  b = noise.shape[0]
  noise = noise.astype(jnp.float32)

  def body(z, xs):
    t, t_next = xs
    v = flow.cfg_velocity(velocity_fn, z, jnp.full((b,), t, jnp.float32), cond, cfg_scale)
    z = flow.euler_step(z, v, jnp.full((b,), t), jnp.full((b,), t_next))
    if known is not None:
      z = _keep(z, flow.interpolate(known, noise, jnp.full((b,), t_next)), known_mask)
    return z, None

  z, _ = jax.lax.scan(body, noise, (ts[:-1], ts[1:]))
  return z


def student_nfe(steps: int) -> int:
  return steps


def euler_nfe(steps: int, cfg_scale: float) -> int:
  """Network evaluations per sample: the [cond, null] batch counts as two."""
  return steps if cfg_scale == 1 else 2 * steps

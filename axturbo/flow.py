"""Rectified flow, as the paper writes it (t = 1 is noise, t = 0 is data).

Shapes: latents are (B, T, C); `t` is (B,) and broadcast over the remaining axes.
All arithmetic is done in float32 whatever the dtype of the network outputs.

This module is the one source of the flow primitives that training, distillation and
generation share: the equations, the time grids, classifier-free guidance, the timestep
samplers and the official defaults (docs/official.md).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

OFFICIAL_CFG_SCALE = 6.0         # teacher sampling, and the teacher's score in distillation
OFFICIAL_TEACHER_STEPS = 250
OFFICIAL_STUDENT_STEPS = 4


def _bcast(t: jax.Array, like: jax.Array) -> jax.Array:
  return jnp.reshape(t.astype(jnp.float32), t.shape + (1,) * (like.ndim - t.ndim))


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """Eq. (2): z_t = t * z_1 + (1 - t) * z_0, with z_1 = noise."""
  t = _bcast(t, x0)
  return t * noise.astype(jnp.float32) + (1.0 - t) * x0.astype(jnp.float32)


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  """Eq. (3): u = z_1 - z_0."""
  return noise.astype(jnp.float32) - x0.astype(jnp.float32)


def flow_matching_loss(v_pred: jax.Array, x0: jax.Array, noise: jax.Array) -> jax.Array:
  """Eq. (4): mean over every element of (v_pred - (z_1 - z_0))^2 (official: plain MSE, weight 1)."""
  return jnp.mean(jnp.square(v_pred.astype(jnp.float32) - velocity_target(x0, noise)))


def x0_from_velocity(z_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
  """Eq. (5): z_0_hat = z_t - t * v."""
  return z_t.astype(jnp.float32) - _bcast(t, z_t) * v.astype(jnp.float32)


def renoise(x0_hat: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """Eq. (6)/(11): the denoise-renoise transition, z_t = t * fresh_noise + (1 - t) * x0_hat.

  The same formula as Eq. (2); named separately because callers pass an *estimate* of x0.
  """
  return interpolate(x0_hat, noise, t)


def euler_step(z_t: jax.Array, v: jax.Array, t: jax.Array, t_next: jax.Array) -> jax.Array:
  """One Euler step of the probability-flow ODE: z_{t'} = z_t + (t' - t) * v."""
  return z_t.astype(jnp.float32) + _bcast(t_next - t, z_t) * v.astype(jnp.float32)


def classifier_free_guidance(v_cond: jax.Array, v_uncond: jax.Array, scale) -> jax.Array:
  """v = v_u + s * (v_c - v_u), in the dtype of the velocities (the bf16 serving path keeps
  bf16); the official null condition is all-zero post-MAF tokens (`cfg_velocity`)."""
  return v_uncond + (v_cond - v_uncond) * scale


def cfg_velocity(apply_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                 x: jax.Array, t: jax.Array, cond: jax.Array, scale) -> jax.Array:
  """Classifier-free guidance as the official wrapper does it: v_u + s * (v_c - v_u).

  The null condition is all-zero post-fusion tokens; conditional and null rows run as one
  batch [cond, null]. A Python scale of exactly 1 runs the conditional pass only.
  apply_fn(x, t, cond) -> v, e.g. `lambda *a: model.apply(params, *a)`.
  """
  if isinstance(scale, (int, float)) and scale == 1:
    return apply_fn(x, t, cond)
  v = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
               jnp.concatenate([cond, jnp.zeros_like(cond)]))
  return classifier_free_guidance(*jnp.split(v, 2), scale)


# ---------------------------------------------------------------------------------------------
# Time grids. Concrete arrays, so that a rollout can index them with Python ints under jit;
# computed by jnp.linspace in float32 so that every sampler keeps the grid it was measured on.

def time_grid(num_steps: int, shift: float = 1.0) -> np.ndarray:
  """shift_times(linspace(1, 0, num_steps + 1), shift) in float32: the Euler solver's and the
  student's times. shift 1 is the official grid; a model trained with `model.time_shift` s > 1
  is sampled on the grid shifted the same way, spending its steps near noise where it trained
  (as SD3 samples). Shifted grids keep 2 steps a sub-grid of 4, so one student serves 1, 2, 4."""
  with jax.ensure_compile_time_eval():
    return np.asarray(shift_times(jnp.linspace(1.0, 0.0, num_steps + 1), shift))


def student_timesteps(num_steps: int = OFFICIAL_STUDENT_STEPS, shift: float = 1.0
                      ) -> np.ndarray:
  """The student's grid [1, ..., t_{num_steps - 1}]: `time_grid` without the final 0."""
  return time_grid(num_steps, shift)[:-1]


# ---------------------------------------------------------------------------------------------
# Timestep samplers, (B,) float32.

def sample_times(key: jax.Array, batch: int, low: float = 0.0, high: float = 1.0,
                 stratified: bool = True) -> jax.Array:
  """Per-sample times in [low, high).

  stratified: (perm(i) + u_i) / B, one sample per 1/B stratum, a low-discrepancy stand-in for
  the official scrambled Sobol draw (the teacher's t, and distillation's t_dmd and t_fake).
  """
  if not 0.0 <= low < high <= 1.0:
    raise ValueError(f'time range must satisfy 0 <= low < high <= 1, got [{low}, {high})')
  k_perm, k_u = jax.random.split(key)
  u = jax.random.uniform(k_u, (batch,), jnp.float32)
  if stratified:
    u = (jax.random.permutation(k_perm, batch).astype(jnp.float32) + u) / batch
  return low + (high - low) * u


def logit_normal_times(key: jax.Array, batch: int) -> jax.Array:
  """t = sigmoid(n), n ~ N(0, 1) (the official 'logit_normal' option)."""
  return jax.nn.sigmoid(jax.random.normal(key, (batch,)))


# The teacher's `train.timestep_sampler` options.
TIMESTEP_SAMPLERS = {'uniform': sample_times, 'logit_normal': logit_normal_times}


def shift_times(t: jax.Array, shift: float) -> jax.Array:
  """t' = s t / (1 + (s - 1) t), the timestep shift of SD3 (Esser et al. 2024, §5.3.2).

  s > 1 moves time towards noise (t = 1), where a sample's content is decided; s = 1 is the
  identity (the official model). Keeps 0 and 1 fixed and the order of times.
  """
  if shift <= 0:
    raise ValueError(f'model.time_shift must be > 0, got {shift}')
  return shift * t / (1.0 + (shift - 1.0) * t)

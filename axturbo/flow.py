"""Rectified flow, as the paper writes it (t = 1 is noise, t = 0 is data).

Shapes: latents are (B, T, C); `t` is (B,) and broadcast over the remaining axes.
All arithmetic is done in float32 whatever the dtype of the network outputs.
"""
import jax
import jax.numpy as jnp


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


def classifier_free_guidance(v_cond: jax.Array, v_uncond: jax.Array, scale: float) -> jax.Array:
  """v = v_u + s * (v_c - v_u); the official null condition is all-zero post-MAF tokens."""
  v_cond, v_uncond = v_cond.astype(jnp.float32), v_uncond.astype(jnp.float32)
  return v_uncond + scale * (v_cond - v_uncond)


def student_timesteps(num_steps: int) -> jax.Array:
  """The student's grid [1, ..., 1/num_steps]: linspace(1, 0, num_steps + 1) without the final 0."""
  return jnp.linspace(1.0, 0.0, num_steps + 1)[:-1]

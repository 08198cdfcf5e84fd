"""Distribution-matching distillation with a diffusion GAN (paper §V, Eqs. 5-15), as pure functions.

Convention (axturbo.flow): z_t = t * eps + (1 - t) * x0, t = 1 is noise, networks predict
v = eps - x0. Latents are (B, T, C); every per-sample time is (B,). Every loss and gradient here
is computed in float32 whatever the dtype of the network outputs (docs/official.md).

Networks are passed as callables, `velocity_fn(z (B, T, C), t (B,), cond (B, L, D)) -> v`, with
their parameters closed over; which parameters receive gradients is decided by what the caller
differentiates, and `axturbo.distill.objectives` composes these functions into the two per-step
objectives with the stop-gradients in place.

Official behaviour this reproduces (docs/official.md, "Distillation"):
  * student rollout over t = [1, .75, .5, .25] (here also that grid shifted by
    `model.time_shift`) with fresh-noise re-noising, gradient through the target step only;
    the target index is one draw per step (official: uniform over 4);
  * DMD gradient with the AudioX normalizer mean|z_t - x0_T| + 1e-8 (== t * mean|v_T|), or the
    DMD2 normalizer mean|x - x0_T|; applied through the stop-gradient MSE;
  * fake model trained by flow matching on stop-gradient student samples;
  * discriminator: the frozen teacher's first K blocks read out in one pass on latents noised to
    t_d ~ U[0, 0.2), one conv head per block, logits averaged over heads, hinge loss;
  * schedule: 5 student steps then 1 fake + discriminator step (`step % 6 < 5`), or DMD2's rule.
"""
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from axturbo import flow

VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# readouts_fn(z (B, T, C), t (B,), cond, num_blocks) -> (K, B, T, C); heads_fn(feats) -> (B, T', 1)
ReadoutsFn = Callable[[jax.Array, jax.Array, jax.Array, int], jax.Array]
HeadsFn = Callable[[jax.Array], jax.Array]

OFFICIAL_INDEX_PROBS = (0.25, 0.25, 0.25, 0.25)
OFFICIAL_DISC_MAX_T = 0.2
AUDIOX_EPS = 1e-8
NORMALIZERS = ('audiox', 'dmd2')

_f32 = jnp.float32


def _per_sample_mean(x: jax.Array) -> jax.Array:
  """(B, ...) -> (B, 1, ..., 1): mean over every non-batch axis (official mean over C, T)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True)


# ----------------------------------------------------------------------------------------------
# Random draws (each takes its own key, so adding one never moves another: docs/official.md).


def check_index_probs(probs: Sequence[float], num_steps: int) -> np.ndarray:
  """Validates the target-index probabilities; returns them as a float64 vector."""
  p = np.asarray(probs, np.float64)
  if p.shape != (num_steps,):
    raise ValueError(f'target-index probabilities must have one entry per student step '
                     f'({num_steps}), got {tuple(probs)}')
  if np.any(p < 0) or not np.isclose(p.sum(), 1.0, atol=1e-6):
    raise ValueError(f'target-index probabilities must be >= 0 and sum to 1, got {tuple(probs)}')
  return p


def sample_target_index(key: jax.Array, probs: Sequence[float] = OFFICIAL_INDEX_PROBS
                        ) -> jax.Array:
  """One rollout target index k in {0..N-1} ~ Categorical(probs) for the whole global batch.

  A scalar drawn from one (replicated) key, so under jit on a mesh every device sees the same k
  (the official code draws one per rank; DMD2 broadcasts one). Returns int32 ().
  Draw it on the host with `int(...)` to use the static-index rollout instead.
  """
  p = check_index_probs(probs, len(probs))
  logits = jnp.log(jnp.asarray(p, _f32))   # log 0 = -inf: never drawn
  return jax.random.categorical(key, logits).astype(jnp.int32)


def sample_discriminator_times(key: jax.Array, batch: int,
                               max_t: float = OFFICIAL_DISC_MAX_T) -> jax.Array:
  """t_d ~ U[0, max_t) per sample (official rand(B) * 0.2; Eq. 13's perturbation level), (B,)."""
  return flow.sample_times(key, batch, 0.0, max_t, stratified=False)


# ----------------------------------------------------------------------------------------------
# Student rollout (Eqs. 5-6).


def student_x0(student_velocity_fn: VelocityFn, z: jax.Array, t: jax.Array, cond: jax.Array
               ) -> jax.Array:
  """Eq. (5): the student's clean estimate x0_hat = z_t - t * v_phi(z_t, t, H_c), float32."""
  return flow.x0_from_velocity(z, student_velocity_fn(z, t, cond), t)


def _rollout_to(index: int, student_velocity_fn, noise, cond, renoise_noises, timesteps):
  b = noise.shape[0]
  z = noise.astype(_f32)
  for i in range(index):
    t = jnp.full((b,), timesteps[i], _f32)
    x0 = student_x0(student_velocity_fn, z, t, cond)
    # Eq. (6) with fresh noise; stop_gradient on z (not only x0) so that no earlier call can
    # contribute a gradient, whatever the velocity function closes over.
    z = jax.lax.stop_gradient(flow.renoise(x0, renoise_noises[i], jnp.full((b,), timesteps[i + 1])))
  t = jnp.full((b,), timesteps[index], _f32)
  return student_x0(student_velocity_fn, z, t, cond)


def student_rollout(student_velocity_fn: VelocityFn, noise: jax.Array, cond: jax.Array,
                    target_index: int | jax.Array, renoise_noises: jax.Array | None,
                    timesteps: Sequence[float] | np.ndarray | None = None) -> jax.Array:
  """Eqs. (5)-(6): the detached denoise-renoise rollout up to step k, then step k with gradient.

  For i < k: x0_i = z_i - t_i v(z_i, t_i); z_{i+1} = sg(t_{i+1} eps_i + (1 - t_{i+1}) x0_i).
  Returns x0_k = z_k - t_k v(z_k, t_k) (B, T, C) float32; only this last call carries gradient.

  Args:
    student_velocity_fn: (z, t, cond) -> v, student parameters closed over; called at CFG 1.
    noise: z at t = 1, (B, T, C).
    cond: the student's conditioning (B, L, D).
    target_index: k. A Python int gives a graph of exactly k + 1 calls (jit it as a static
      argument: N compiled variants); a traced int32 scalar runs the k detached steps as a
      loop of k trips and then the one differentiated call, so the program holds two velocity
      calls whatever N (draw k with `sample_target_index`; it must lie in [0, N)).
    renoise_noises: fresh noise for each re-noising, (N - 1, B, T, C) (entries >= k unused);
      None only for a 1-step grid.
    timesteps: the student grid, default `flow.student_timesteps(4)` = [1, .75, .5, .25];
      must be concrete (the grid is a configuration, not data).
  """
  ts = np.asarray(flow.student_timesteps() if timesteps is None else timesteps, np.float32)
  n = ts.shape[0]
  if ts.ndim != 1 or n < 1:
    raise ValueError(f'timesteps must be a non-empty 1-D grid, got shape {ts.shape}')
  want = (n - 1,) + tuple(noise.shape)
  if renoise_noises is None and n == 1:
    renoise_noises = jnp.zeros(want, _f32)
  if renoise_noises is None or tuple(renoise_noises.shape) != want:
    raise ValueError(f'renoise_noises must be (num_steps - 1, B, T, C) = {want}, '
                     f'got {None if renoise_noises is None else tuple(renoise_noises.shape)}')
  args = (student_velocity_fn, noise, cond, renoise_noises, ts)
  if isinstance(target_index, (int, np.integer)):
    if not 0 <= int(target_index) < n:
      raise ValueError(f'target_index must be in [0, {n}), got {target_index}')
    return _rollout_to(int(target_index), *args)
  index = jnp.asarray(target_index)
  if index.shape != () or not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f'a traced target_index must be an integer scalar, got {index.dtype}'
                     f'{index.shape}')
  if n == 1:
    return _rollout_to(0, *args)
  return _rollout_traced(index, *args)


def _rollout_traced(index: jax.Array, student_velocity_fn, noise, cond, renoise_noises,
                    timesteps):
  """`_rollout_to` for a traced index: reverse-mode never enters the loop (its result is
  stop-gradient), so a dynamic trip count is allowed under jax.grad."""
  b = noise.shape[0]
  ts = jnp.asarray(timesteps, _f32)

  def detached_step(i, z):
    x0 = student_x0(student_velocity_fn, z, jnp.full((b,), ts[i]), cond)
    return flow.renoise(x0, renoise_noises[i], jnp.full((b,), ts[i + 1]))

  z = jax.lax.stop_gradient(jax.lax.fori_loop(0, index, detached_step, noise.astype(_f32)))
  return student_x0(student_velocity_fn, z, jnp.full((b,), ts[index]), cond)


# ----------------------------------------------------------------------------------------------
# Distribution matching (Eqs. 6, 10).


def teacher_velocity(apply_fn: VelocityFn, z: jax.Array, t: jax.Array, cond: jax.Array,
                     guidance_scale: float = flow.OFFICIAL_CFG_SCALE) -> jax.Array:
  """The real score's velocity v_theta with CFG (official scale 6; null = zero post-MAF tokens):
  v_u + s (v_c - v_u), float32, stop-gradient (the teacher is data to the student)."""
  v = flow.cfg_velocity(apply_fn, z, t, cond, guidance_scale)
  return jax.lax.stop_gradient(v.astype(_f32))


def fake_velocity(apply_fn: VelocityFn, z: jax.Array, t: jax.Array, cond: jax.Array
                  ) -> jax.Array:
  """The fake score's velocity v_psi at CFG 1 with the student's conditioning, float32, sg."""
  return jax.lax.stop_gradient(apply_fn(z, t, cond).astype(_f32))


def dmd_gradient(v_teacher: jax.Array, v_fake: jax.Array, x0_student: jax.Array,
                 z_t: jax.Array, t: jax.Array, normalizer: str = 'audiox'
                 ) -> tuple[jax.Array, jax.Array]:
  """Eq. (10) as implemented: the per-element DMD gradient g on the student sample, float32.

  x0_T = z - t v_T, x0_F = z - t v_F; p_real = ref - x0_T, p_fake = ref - x0_F;
  g = nan_to_num((p_real - p_fake) / norm), with, per sample (mean over all non-batch axes):
    'audiox' (official): ref = z_t, norm = mean|p_real| + 1e-8, so g = (v_T - v_F) / mean|v_T|
      (t cancels; the effective omega_tau of Eq. 10);
    'dmd2': ref = x0_student, norm = mean|x0_student - x0_T| (no epsilon, as DMD2).
  Descending along g moves x0_student towards x0_T and away from x0_F.

  Returns:
    g (B, T, C) float32 (stop-gradient) and the number of non-finite entries before
    nan_to_num (int32 scalar; nan_to_num maps +-inf to +-float-max, which is worth logging).
  """
  if normalizer not in NORMALIZERS:
    raise ValueError(f'normalizer must be one of {NORMALIZERS}, got {normalizer!r}')
  sg = jax.lax.stop_gradient
  z = sg(z_t).astype(_f32)
  x0_t = flow.x0_from_velocity(z, sg(v_teacher), sg(t))
  x0_f = flow.x0_from_velocity(z, sg(v_fake), sg(t))
  ref = z if normalizer == 'audiox' else sg(x0_student).astype(_f32)
  p_real, p_fake = ref - x0_t, ref - x0_f
  norm = _per_sample_mean(jnp.abs(p_real))
  if normalizer == 'audiox':
    norm = norm + AUDIOX_EPS
  g = (p_real - p_fake) / norm
  num_nonfinite = jnp.sum(~jnp.isfinite(g)).astype(jnp.int32)
  return jnp.nan_to_num(g), num_nonfinite


def distribution_matching_loss(x0_student: jax.Array, g: jax.Array) -> jax.Array:
  """Eq. (10) as a loss: 0.5 * mean((x0 - sg(x0 - g))^2), so d loss / d x0 = g / x0.size."""
  x = x0_student.astype(_f32)
  return 0.5 * jnp.mean(jnp.square(x - jax.lax.stop_gradient(x - g.astype(_f32))))


# ----------------------------------------------------------------------------------------------
# Fake model (Eqs. 11-12).


def fake_flow_matching_loss(fake_velocity_fn: VelocityFn, x0_student: jax.Array,
                            noise: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
  """Eqs. (11)-(12): mean((v_psi(z~, t, c) - (eps - sg(x0)))^2), z~ = t eps + (1 - t) sg(x0)."""
  x0 = jax.lax.stop_gradient(x0_student)
  z = flow.interpolate(x0, noise, t)
  return flow.flow_matching_loss(fake_velocity_fn(z, t, cond), x0, noise)


# ----------------------------------------------------------------------------------------------
# Diffusion discriminator and adversarial losses (Eqs. 13-15).


def noisy_latent_for_discriminator(x0: jax.Array, noise: jax.Array, t_d: jax.Array
                                   ) -> jax.Array:
  """Eq. (13)/(14) inputs: z_{t_d} = t_d eps + (1 - t_d) x0, with t_d ~ U[0, 0.2), float32."""
  return flow.interpolate(x0, noise, t_d)


def discriminator_logits(readouts_fn: ReadoutsFn, heads_fn: HeadsFn, x0: jax.Array,
                         noise: jax.Array, t_d: jax.Array, cond: jax.Array,
                         num_blocks: int) -> jax.Array:
  """D(z_{t_d}, t_d, H_c): the teacher's first `num_blocks` read-outs from ONE forward pass
  (`MMDiT.readouts`), one head per block, logits averaged over heads (`DiscriminatorHeads`).

  readouts_fn(z, t, cond, num_blocks) -> (K, B, T, C); heads_fn((K, B, T, C)) -> (B, T', 1).
  Gradient flows into x0 (generator term); the caller's parameter closures decide the rest.
  Returns patch logits (B, T', 1) float32.
  """
  z = noisy_latent_for_discriminator(x0, noise, t_d)
  feats = readouts_fn(z, t_d, cond, num_blocks)
  if feats.ndim != 4 or feats.shape[0] != num_blocks:
    raise ValueError(f'readouts_fn must return (num_blocks={num_blocks}, B, T, C), '
                     f'got {feats.shape}')
  return heads_fn(feats).astype(_f32)


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Eq. (13): mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), each a mean over patches."""
  real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(_f32)))
  fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(_f32)))
  return real + fake


def adversarial_loss(logits_fake: jax.Array) -> jax.Array:
  """Eq. (14): the generator's hinge term -mean(D(fake))."""
  return -jnp.mean(logits_fake.astype(_f32))


def student_loss(loss_dm: jax.Array, loss_adv: jax.Array, dm_weight: float = 1.0,
                 adv_weight: float = 1.0) -> jax.Array:
  """Eq. (15): L_student = w_dm L_DM + lambda_adv L_adv (official weights 1 and 1)."""
  return dm_weight * loss_dm + adv_weight * loss_adv


# ----------------------------------------------------------------------------------------------
# Update schedules (docs/official.md). Work on Python ints and traced int scalars alike.


def is_student_step(step, student_steps_per_cycle: int = 5, fake_steps_per_cycle: int = 1):
  """Official AudioX-Turbo rule: within each cycle of S + F steps, the first S update the student
  only and the last F update the fake + discriminator only (official S=5, F=1:
  `step % 6 < 5`). Note this is the reverse of DMD2's ratio."""
  if student_steps_per_cycle < 1 or fake_steps_per_cycle < 1:
    raise ValueError('student_steps_per_cycle and fake_steps_per_cycle must be >= 1, got '
                     f'{student_steps_per_cycle}, {fake_steps_per_cycle}')
  return step % (student_steps_per_cycle + fake_steps_per_cycle) < student_steps_per_cycle


def dmd2_is_student_step(step, fake_updates_per_student_update: int = 5):
  """DMD2's two-time-scale rule: the student (generator) updates when step % k == 0 and the fake
  (+ discriminator) updates on every step (DMD2 `dfake_gen_update_ratio`, 5 for SDXL)."""
  if fake_updates_per_student_update < 1:
    raise ValueError(f'fake_updates_per_student_update must be >= 1, got '
                     f'{fake_updates_per_student_update}')
  return step % fake_updates_per_student_update == 0


SCHEDULES = ('audiox', 'dmd2')


def updates_at(step, schedule: str = 'audiox', *, student_steps_per_cycle: int = 5,
               fake_steps_per_cycle: int = 1, fake_updates_per_student_update: int = 5):
  """(update_student, update_fake_and_discriminator) at `step` under `schedule`.

  'audiox': exactly one of the two per step (`is_student_step`); 'dmd2': the fake every step and
  the student every k-th step (`dmd2_is_student_step`), both on the same samples.
  """
  if schedule == 'audiox':
    s = is_student_step(step, student_steps_per_cycle, fake_steps_per_cycle)
    return s, ~s if isinstance(s, jax.Array) else not s
  if schedule == 'dmd2':
    s = dmd2_is_student_step(step, fake_updates_per_student_update)
    return s, (jnp.bool_(True) if isinstance(s, jax.Array) else True)
  raise ValueError(f'schedule must be one of {SCHEDULES}, got {schedule!r}')

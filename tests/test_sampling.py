"""Samplers against step-by-step numpy references and oracle velocities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.generation import sampling

B, T, C, L, D = 2, 6, 3, 4, 5


def _rand(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _point_mass_velocity(x_star):
  """Exact flow velocity when the data is the single point x*: v = (z - x*) / t."""
  return lambda z, t: (z - x_star) / t[:, None, None]


def _toy_velocity(z, t, cond=None):
  """A nonlinear velocity with explicit t (and cond) dependence, for loop-by-loop references."""
  c = 0.0 if cond is None else jnp.mean(cond, axis=(1, 2))[:, None, None]
  return jnp.sin(z) * (1.0 + t[:, None, None]) + 0.3 * z * t[:, None, None] + c


def _toy_velocity_np(z, t, cond=None):
  c = 0.0 if cond is None else cond.mean(axis=(1, 2))[:, None, None]
  return np.sin(z) * (1.0 + t) + 0.3 * z * t + c


@pytest.mark.parametrize('steps', [1, 2, 4])
def test_student_recovers_point_mass_exactly(steps):
  x_star = _rand(0, (B, T, C))
  noise = _rand(1, (B, T, C))
  renoise = _rand(2, (steps - 1, B, T, C))
  out = jax.jit(lambda n, r: sampling.sample_student(_point_mass_velocity(x_star), n, r, steps))(
      noise, renoise)
  np.testing.assert_allclose(out, x_star, atol=1e-5)


def _grid(steps, shift):
  """SD3's shifted linspace, written out in float64."""
  u = np.linspace(1.0, 0.0, steps + 1)
  return shift * u / (1 + (shift - 1) * u)


@pytest.mark.parametrize('shift', [1.0, 3.0])
@pytest.mark.parametrize('steps', [1, 2, 4])
def test_student_matches_official_loop(steps, shift):
  noise = _rand(3, (B, T, C))
  renoise = _rand(4, (steps - 1, B, T, C))
  ts = _grid(steps, shift)
  z = noise.astype(np.float64)
  for i in range(steps):  # the official sample_dmd loop
    x0 = z - ts[i] * _toy_velocity_np(z, ts[i])
    if i < steps - 1:
      z = ts[i + 1] * renoise[i] + (1 - ts[i + 1]) * x0
  got = sampling.sample_student(_toy_velocity, jnp.asarray(noise), jnp.asarray(renoise), steps,
                               shift=shift)
  np.testing.assert_allclose(got, x0, rtol=1e-5, atol=1e-5)


def test_student_renoise_is_used():
  noise = _rand(5, (B, T, C))
  r1, r2 = _rand(6, (3, B, T, C)), _rand(7, (3, B, T, C))
  a = sampling.sample_student(_toy_velocity, noise, r1, 4)
  b = sampling.sample_student(_toy_velocity, noise, r2, 4)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


@pytest.mark.parametrize('steps', [0, 3, 8])
def test_student_refuses_other_step_counts(steps):
  with pytest.raises(ValueError, match='steps in'):
    sampling.sample_student(_toy_velocity, jnp.zeros((B, T, C)), None, steps)


def test_student_checks_renoise_shape():
  with pytest.raises(ValueError, match='renoise'):
    sampling.sample_student(_toy_velocity, jnp.zeros((B, T, C)), jnp.zeros((2, B, T, C)), 4)


@pytest.mark.parametrize('cfg,shift', [(1.0, 1.0), (6.0, 1.0), (6.0, 3.0)])
def test_euler_matches_loop_with_cfg(cfg, shift):
  steps = 5
  noise = _rand(8, (B, T, C))
  cond = _rand(9, (B, L, D)) + 0.5
  ts = _grid(steps, shift)
  z = noise.astype(np.float64)
  for i in range(steps):
    v_c = _toy_velocity_np(z, ts[i], cond)
    v_u = _toy_velocity_np(z, ts[i], np.zeros_like(cond))
    z = z + (ts[i + 1] - ts[i]) * (v_u + cfg * (v_c - v_u))
  got = jax.jit(lambda n, c: sampling.sample_euler(_toy_velocity, n, c, steps, cfg,
                                                   shift=shift))(noise, cond)
  np.testing.assert_allclose(got, z, rtol=1e-5, atol=1e-5)


def test_euler_is_exact_on_straight_paths():
  x_star = _rand(10, (B, T, C))
  vf = lambda z, t, c: _point_mass_velocity(x_star)(z, t)
  out = sampling.sample_euler(vf, jnp.asarray(_rand(11, (B, T, C))), jnp.zeros((B, L, D)), 3, 1.0)
  np.testing.assert_allclose(out, x_star, atol=1e-5)


def test_known_frames_are_kept_exactly():
  noise = _rand(12, (B, T, C))
  known = _rand(13, (B, T, C))
  mask = np.zeros((B, T, 1), bool)
  mask[0, :2] = True
  mask[1, 3:] = True
  s = sampling.sample_student(_toy_velocity, noise, _rand(14, (3, B, T, C)), 4, known=known,
                              known_mask=mask)
  e = sampling.sample_euler(_toy_velocity, noise, _rand(15, (B, L, D)), 4, 6.0, known=known,
                            known_mask=mask)
  free = sampling.sample_student(_toy_velocity, noise, _rand(14, (3, B, T, C)), 4)
  for out in (s, e):
    out = np.asarray(out)
    np.testing.assert_array_equal(out[np.broadcast_to(mask, out.shape)],
                                  known[np.broadcast_to(mask, out.shape)])
  assert not np.allclose(np.asarray(s)[~np.broadcast_to(mask, s.shape)],
                         known[~np.broadcast_to(mask, s.shape)])
  assert not np.allclose(np.asarray(s), np.asarray(free))


def test_nfe_counts():
  assert sampling.student_nfe(4) == 4
  assert sampling.euler_nfe(10, 6.0) == 20
  assert sampling.euler_nfe(10, 1.0) == 10

"""Flow-matching identities against independent NumPy formulas."""
import jax
import numpy as np

from axturbo import flow


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x0 = rng.normal(size=(3, 5, 4)).astype(np.float32)
  noise = rng.normal(size=(3, 5, 4)).astype(np.float32)
  t = rng.uniform(size=(3,)).astype(np.float32)
  return x0, noise, t


def test_interpolation_endpoints_and_x0_recovery():
  x0, noise, t = _data()
  ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
  np.testing.assert_allclose(flow.interpolate(x0, noise, ones), noise, atol=0)
  np.testing.assert_allclose(flow.interpolate(x0, noise, zeros), x0, atol=0)
  z = flow.interpolate(x0, noise, t)
  np.testing.assert_allclose(z, t[:, None, None] * noise + (1 - t[:, None, None]) * x0, rtol=1e-6)
  # Eq. (5) inverts Eq. (2) given the true velocity.
  v = flow.velocity_target(x0, noise)
  np.testing.assert_allclose(flow.x0_from_velocity(z, v, t), x0, atol=1e-5)
  # An Euler step with the true velocity stays on the straight path.
  t2 = t * 0.5
  np.testing.assert_allclose(flow.euler_step(z, v, t, t2), flow.interpolate(x0, noise, t2),
                             atol=1e-5)


def test_loss_matches_numpy_and_has_expected_gradient():
  x0, noise, _ = _data(1)
  v = np.random.default_rng(2).normal(size=x0.shape).astype(np.float32)
  want = np.mean((v - (noise - x0)) ** 2)
  np.testing.assert_allclose(flow.flow_matching_loss(v, x0, noise), want, rtol=1e-6)
  g = jax.grad(flow.flow_matching_loss)(v, x0, noise)
  np.testing.assert_allclose(g, 2 * (v - (noise - x0)) / v.size, rtol=1e-5)


def test_cfg_and_student_grid():
  rng = np.random.default_rng(3)
  c, u = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
  np.testing.assert_allclose(flow.classifier_free_guidance(c, u, 1.0), c, rtol=1e-6)
  np.testing.assert_allclose(flow.classifier_free_guidance(c, u, 0.0), u, rtol=1e-6)
  # MMAudio's form s*c + (1-s)*u is the same combination.
  np.testing.assert_allclose(flow.classifier_free_guidance(c, u, 6.0), 6 * c - 5 * u, rtol=1e-5)
  np.testing.assert_allclose(flow.student_timesteps(4), [1.0, 0.75, 0.5, 0.25])
  np.testing.assert_allclose(flow.student_timesteps(1), [1.0])


def test_shifted_grid():
  # shift 1 is exactly the official linspace (float32 parity with the released sampler).
  np.testing.assert_array_equal(flow.time_grid(4, 1.0), np.linspace(1, 0, 5, dtype=np.float32))
  np.testing.assert_allclose(flow.student_timesteps(4, 3.0), [1.0, 0.9, 0.75, 0.5], rtol=1e-6)
  # 1 and 2 steps stay sub-grids of 4 (one student serves all three) at any shift.
  for s in (0.5, 3.0, 6.0):
    four = flow.time_grid(4, s)
    np.testing.assert_array_equal(flow.time_grid(2, s), four[::2])
    np.testing.assert_array_equal(flow.time_grid(1, s), four[::4])

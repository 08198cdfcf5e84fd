"""FD / FAD, KL and Inception Score against closed forms and independent computations."""
import numpy as np
import pytest
import scipy.linalg

from axturbo.eval import metrics


def _random_psd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d + (0.0 if rank else 0.1) * np.eye(d)


def test_frechet_distance_commuting_closed_form():
  # Diagonal covariances commute: tr sqrt(S1 S2) = sum sqrt(s1_i s2_i).
  rng = np.random.default_rng(0)
  d = 6
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-10)
  # Same eigenbasis, rotated: still commuting, same value.
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  got_rot = metrics.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2,
                                     q @ np.diag(s2) @ q.T)
  assert got_rot == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_general_matches_scipy_sqrtm_and_is_symmetric():
  rng = np.random.default_rng(1)
  d = 8
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
  ref = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
         - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
  fd12 = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert fd12 == pytest.approx(ref, rel=1e-8)
  assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(fd12, rel=1e-9)
  assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
  # A pure mean shift adds exactly |d mu|^2.
  assert metrics.frechet_distance(mu1, s1, mu1 + 2.0, s1) == pytest.approx(4.0 * d, rel=1e-8)


def test_frechet_distance_rank_deficient_is_finite_and_exact():
  # Singular covariances (fewer samples than dims) are where scipy's sqrtm goes complex.
  rng = np.random.default_rng(2)
  d = 10
  s1, s2 = _random_psd(rng, d, rank=3), _random_psd(rng, d, rank=4)
  fd = metrics.frechet_distance(np.zeros(d), s1, np.zeros(d), s2)
  # 1-D check of the same identity: N(0, a) vs N(0, b) -> (sqrt a - sqrt b)^2.
  assert metrics.frechet_distance([0.0], [[4.0]], [0.0], [[9.0]]) == pytest.approx(1.0)
  assert np.isfinite(fd) and fd >= 0
  assert metrics.frechet_distance(np.zeros(d), s1, np.zeros(d), s1) == pytest.approx(0, abs=1e-8)


def test_sample_estimate_approaches_population_value():
  rng = np.random.default_rng(3)
  d = 4
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  s1, s2 = np.diag([1.0, 2.0, 0.5, 1.5]), np.diag([2.0, 1.0, 1.0, 0.5])
  exact = metrics.frechet_distance(mu1, s1, mu2, s2)
  x = rng.multivariate_normal(mu1, s1, size=200_000)
  y = rng.multivariate_normal(mu2, s2, size=200_000)
  assert metrics.embedding_frechet_distance(x, y) == pytest.approx(exact, rel=0.02)


def test_accumulator_matches_batch_stats_and_fad_uses_embedder():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((37, 5)) * [1, 2, 3, 4, 5] + 1.0
  acc = metrics.GaussianAccumulator(5)
  for i in range(0, 37, 10):
    acc.update(x[i:i + 10])
  mu, sigma = acc.stats()
  mu_ref, sigma_ref = metrics.gaussian_stats(x)
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
  np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-10, atol=1e-12)
  # FAD = FD of the embedder's outputs; the embedder sees batches of <= batch_size clips.
  seen = []
  proj = rng.standard_normal((16, 3))

  def embed(batch):
    seen.append(batch.shape[0])
    return batch @ proj

  ref_audio = [rng.standard_normal(16) for _ in range(9)]
  gen_audio = [rng.standard_normal(16) + 0.3 for _ in range(7)]
  fad = metrics.frechet_audio_distance(embed, ref_audio, gen_audio, batch_size=4)
  assert seen == [4, 4, 1, 4, 3]
  expected = metrics.embedding_frechet_distance(np.stack(ref_audio) @ proj,
                                                np.stack(gen_audio) @ proj)
  assert fad == pytest.approx(expected, rel=1e-12)


def test_kl_softmax_closed_form_and_properties():
  rng = np.random.default_rng(5)
  a, b = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
  p = np.exp(a) / np.exp(a).sum(1, keepdims=True)
  q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
  expected = np.mean(np.sum(p * np.log(p / q), axis=1))
  assert metrics.kl_divergence(a, b, 'softmax', eps=0.0) == pytest.approx(expected, rel=1e-10)
  # Direction: KL(p_ref || p_gen), not the reverse.
  reverse = np.mean(np.sum(q * np.log(q / p), axis=1))
  assert abs(expected - reverse) > 1e-3
  assert metrics.kl_divergence(a, a, 'softmax', eps=0.0) == pytest.approx(0.0, abs=1e-12)
  # Softmax is shift invariant per row.
  assert metrics.kl_divergence(a + 3.0, b - 1.0, 'softmax', eps=0.0) == pytest.approx(expected)
  # The default eps only perturbs slightly.
  assert metrics.kl_divergence(a, b, 'softmax') == pytest.approx(expected, abs=1e-4)


def test_kl_sigmoid_matches_toolbox_formula():
  # Toolbox: sum_c sig(r)_c * (log sig(r)_c - log(sig(g)_c + 1e-6)), averaged over clips.
  r = np.array([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
  g = np.array([[1.0, 1.0, -2.0], [0.0, 0.5, 1.0]])
  sr, sg = 1 / (1 + np.exp(-r)), 1 / (1 + np.exp(-g))
  expected = np.mean(np.sum(sr * (np.log(sr) - np.log(sg + 1e-6)), axis=1))
  assert metrics.kl_divergence(r, g) == pytest.approx(expected, rel=1e-12)
  # Large logits must not overflow.
  assert np.isfinite(metrics.kl_divergence(r * 1e3, g * 1e3))
  with pytest.raises(ValueError, match='paired'):
    metrics.kl_divergence(r, g[:1])
  with pytest.raises(ValueError, match='mode'):
    metrics.kl_divergence(r, g, mode='relu')


def test_inception_score_extremes_and_formula():
  c = 8
  # Identical posteriors for every clip (uniform or not): p(y|x) = p(y) -> IS = 1.
  assert metrics.inception_score(np.zeros((40, c)), splits=4)[0] == pytest.approx(1.0)
  rng = np.random.default_rng(6)
  same = np.tile(rng.standard_normal(c), (40, 1))
  assert metrics.inception_score(same, splits=2)[0] == pytest.approx(1.0)
  # Confident one-hot predictions spread evenly over C classes -> IS = C.
  onehot = 60.0 * np.eye(c)[np.arange(40) % c]
  mean, std = metrics.inception_score(onehot, splits=5)
  assert mean == pytest.approx(c, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
  # Half the classes used evenly -> IS = C / 2.
  half = 60.0 * np.eye(c)[np.arange(32) % (c // 2)]
  assert metrics.inception_score(half, splits=1)[0] == pytest.approx(c / 2, rel=1e-6)
  # General case vs a direct computation on one split.
  z = rng.standard_normal((25, c))
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  py = p.mean(0)
  expected = np.exp(np.mean(np.sum(p * np.log(p / py), axis=1)))
  assert metrics.inception_score(z, splits=1)[0] == pytest.approx(expected, rel=1e-10)
  # Shuffling changes the split assignment deterministically but not the 1-split score.
  assert metrics.inception_score(z, 1, shuffle_seed=2020)[0] == pytest.approx(expected)
  with pytest.raises(ValueError, match='splits'):
    metrics.inception_score(z, splits=26)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='NaN'):
    metrics.gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
  with pytest.raises(ValueError, match='>= 2'):
    metrics.gaussian_stats(np.zeros((1, 3)))
  with pytest.raises(ValueError, match='dim'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))

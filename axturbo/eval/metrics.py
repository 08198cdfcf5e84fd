"""Distribution metrics over embeddings and classifier outputs: FD / FAD, KL, Inception Score.

Conventions follow the AudioLDM evaluation toolbox (haoheliu/audioldm_eval), which the
text-to-audio literature the paper compares against reports with:
  * FD:  Frechet distance between Gaussians fitted to PANNs CNN14 embeddings (the 2048-d
         ReLU(fc1) output); FAD is the same distance over VGGish embeddings. Both are
         `frechet_distance(*gaussian_stats(ref), *gaussian_stats(gen))`.
  * KL:  mean over paired samples of KL(p_ref || p_gen) between PANNs class posteriors,
         computed from the AudioSet logits. The paper (App. A-B) describes the posteriors as
         "multi-label class prediction distributions", i.e. sigmoid outputs, so 'sigmoid' is
         the default; 'softmax' is the AudioGen-style variant the toolbox also reports.
  * IS:  exp(E_x KL(p(y|x) || p(y))) over softmax(logits), averaged over `splits` chunks.
All statistics are computed in float64 on the host; inputs may be NumPy or JAX arrays.
"""
from typing import Callable, Iterable

import numpy as np

KL_EPS = 1e-6  # added to p_gen inside the log, as the toolbox does


def _as_2d(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name} must be (num_samples, dim), got shape {x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains NaN or Inf')
  return x


def gaussian_stats(embeddings) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased covariance (D, D) of (N, D) embeddings, N >= 2."""
  x = _as_2d(embeddings, 'embeddings')
  if x.shape[0] < 2:
    raise ValueError(f'need >= 2 embeddings to fit a Gaussian, got {x.shape[0]}')
  return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


class GaussianAccumulator:
  """Streaming mean/covariance of embeddings seen in batches (float64 sums)."""

  def __init__(self, dim: int):
    self.n = 0
    self.sum = np.zeros(dim)
    self.sum_outer = np.zeros((dim, dim))

  def update(self, embeddings) -> None:
    x = _as_2d(embeddings, 'embeddings')
    if x.shape[1] != self.sum.shape[0]:
      raise ValueError(f'embedding dim {x.shape[1]} != accumulator dim {self.sum.shape[0]}')
    self.n += x.shape[0]
    self.sum += x.sum(axis=0)
    self.sum_outer += x.T @ x

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) equal to gaussian_stats of every embedding seen."""
    if self.n < 2:
      raise ValueError(f'need >= 2 embeddings to fit a Gaussian, got {self.n}')
    mu = self.sum / self.n
    sigma = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
    return mu, sigma


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
  w, v = np.linalg.eigh(0.5 * (a + a.T))
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr(sqrt(S1 S2)) for PSD S1, S2.

  S1 S2 is not symmetric, but it is similar to sqrt(S1) S2 sqrt(S1), which is symmetric PSD, so
  the trace of its square root is the sum of square roots of that matrix's eigenvalues. Two
  eigendecompositions replace the general (and sometimes complex-valued) scipy sqrtm.
  """
  r1 = _sqrt_psd(np.asarray(sigma1, np.float64))
  w = np.linalg.eigvalsh(r1 @ np.asarray(sigma2, np.float64) @ r1)
  return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared 2-Wasserstein distance between N(mu1, S1) and N(mu2, S2).

  |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) (Dowson & Landau 1982; the FID/FAD formula).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0]
  for name, m, s in (('1', mu1, sigma1), ('2', mu2, sigma2)):
    if m.shape != (d,) or s.shape != (d, d):
      raise ValueError(f'gaussian {name}: mu {m.shape} / sigma {s.shape} do not match dim {d}')
  diff = mu1 - mu2
  fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
  return float(max(fd, 0.0))  # clip the tiny negative values round-off gives for equal inputs


def embedding_frechet_distance(ref_embeddings, gen_embeddings) -> float:
  """FD between Gaussians fitted to (N, D) reference and (M, D) generated embeddings."""
  return frechet_distance(*gaussian_stats(ref_embeddings), *gaussian_stats(gen_embeddings))


def embed_all(embed_fn: Callable[[np.ndarray], np.ndarray], audio: Iterable,
              batch_size: int = 16) -> np.ndarray:
  """Runs `embed_fn` ((B, ...) audio -> (B, D) embeddings) over an iterable of clips."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  out, batch = [], []
  for clip in audio:
    batch.append(np.asarray(clip))
    if len(batch) == batch_size:
      out.append(np.asarray(embed_fn(np.stack(batch)), np.float64))
      batch = []
  if batch:
    out.append(np.asarray(embed_fn(np.stack(batch)), np.float64))
  if not out:
    raise ValueError('no audio clips to embed')
  return np.concatenate(out, axis=0)


def frechet_audio_distance(embed_fn: Callable[[np.ndarray], np.ndarray], ref_audio: Iterable,
                           gen_audio: Iterable, batch_size: int = 16) -> float:
  """FAD: FD between embeddings of reference and generated clips under any embedder.

  `embed_fn` maps a (B, ...) batch of equally shaped clips to (B, D) (e.g. VGGish for FAD,
  the embeddings of `cnn14.Cnn14` for the paper's FD).
  """
  return embedding_frechet_distance(embed_all(embed_fn, ref_audio, batch_size),
                                    embed_all(embed_fn, gen_audio, batch_size))


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def posteriors(logits, mode: str = 'sigmoid') -> np.ndarray:
  """(N, C) class posteriors from logits: per-class sigmoid or softmax over classes."""
  z = _as_2d(logits, 'logits')
  if mode == 'sigmoid':
    return _sigmoid(z)
  if mode == 'softmax':
    return np.exp(_log_softmax(z))
  raise ValueError(f"mode must be 'sigmoid' or 'softmax', got {mode!r}")


def kl_divergence(ref_logits, gen_logits, mode: str = 'sigmoid', eps: float = KL_EPS) -> float:
  """Mean over paired clips of sum_c p_ref,c (log p_ref,c - log(p_gen,c + eps)).

  Args:
    ref_logits: (N, C) classifier logits of the reference clips.
    gen_logits: (N, C) logits of the generated clips, row i paired with reference row i.
    mode: 'sigmoid' (per-class probabilities; multi-label, the paper's description and the
      toolbox's `kullback_leibler_divergence_sigmoid`) or 'softmax' (`..._softmax`). For
      'sigmoid' the sum runs over the positive-class probabilities only, as in the toolbox
      (it is not the sum of per-class Bernoulli KLs), so numbers stay comparable.
    eps: added to p_gen inside the log (the toolbox uses 1e-6); eps = 0 gives the exact KL.

  Returns:
    The mean KL in nats (>= 0 up to the eps term; 0 for identical inputs when eps = 0).
  """
  p = posteriors(ref_logits, mode)
  q = posteriors(gen_logits, mode)
  if p.shape != q.shape:
    raise ValueError(f'reference logits {p.shape} and generated logits {q.shape} must be paired '
                     'row by row (same shape)')
  if mode == 'softmax' and eps == 0.0:
    log_q = _log_softmax(np.asarray(gen_logits, np.float64))
  else:
    log_q = np.log(q + eps)
  # p log p with the convention 0 log 0 = 0.
  p_log_p = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return float(np.mean(np.sum(p_log_p - p * log_q, axis=-1)))


def inception_score(logits, splits: int = 10, shuffle_seed: int | None = None
                    ) -> tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) with p(y|x) = softmax(logits).

  Args:
    logits: (N, C) classifier logits of generated clips.
    splits: the clips are cut into `splits` contiguous chunks (sizes differ by <= 1); p(y) is
      each chunk's mean posterior.
    shuffle_seed: if given, rows are permuted with np.random.RandomState(seed) first (the
      toolbox shuffles with seed 2020).

  Returns:
    (mean, std) of the per-chunk scores. 1 <= IS <= C; 1 for identical posteriors, C for
    confident predictions spread evenly over C classes.
  """
  z = _as_2d(logits, 'logits')
  n = z.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f'splits must be in [1, num_samples={n}], got {splits}')
  if shuffle_seed is not None:
    z = z[np.random.RandomState(shuffle_seed).permutation(n)]
  log_p = _log_softmax(z)
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    pc = p[lo:hi]
    marginal = pc.mean(axis=0)
    log_marginal = np.log(np.where(marginal > 0, marginal, 1.0))
    # Terms with p(y|x) = 0 (underflow of very confident logits) contribute 0, not 0 * inf.
    kl = np.sum(np.where(pc > 0, pc * (log_p[lo:hi] - log_marginal), 0.0), axis=-1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))

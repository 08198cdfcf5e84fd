"""Log-mel codec: a phase-free, parameter-free audio latent that a CPU-sized model can learn.

Encoding (B, N, 2) stereo -> (B, T, n_mels), T = N / hop:
  1. mono downmix m = (l + r) / 2 (the benchmark's detector judges the downmix too);
  2. STFT magnitude |X| (periodic Hann window of n_fft, hop `hop`, centred frames with reflect
     padding; the last centred frame is dropped so that T = N / hop exactly);
  3. mel magnitude M |X| (Slaney-normalised triangular filters, Slaney mel scale);
  4. z = (log(mel + eps) - mean) / std: `mean`/`std` are measured on the training data so that
     latents have about unit variance, as rectified flow pairs them with N(0, 1) noise.

Decoding inverts 4 exactly, estimates a non-negative linear magnitude from the mel magnitude
(`nnls_iters` multiplicative non-negative least-squares updates started at the filterbank's
pseudo-inverse), then recovers a phase with fast Griffin-Lim (momentum 0.99, `gl_iters`
iterations, a fixed pseudo-random initial phase, so decoding is deterministic) and writes the
mono signal to both channels. It is lossy by design (no phase, no panning, mel resolution);
docs/latent_codec.md measures what survives. Same interface as `vae.OobleckVAE` (encode /
decode / hop_length / latent_dim / __call__); `init` gives an empty tree.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from axturbo.models import frame_codec


def hz_to_mel(f: np.ndarray) -> np.ndarray:
  """Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above."""
  f = np.asarray(f, np.float64)
  f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
  return np.where(f < min_log_hz, f / f_sp,
                  min_log_hz / f_sp + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
  """Inverse of `hz_to_mel`."""
  mel = np.asarray(mel, np.float64)
  f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
  min_log_mel = min_log_hz / f_sp
  return np.where(mel < min_log_mel, mel * f_sp,
                  min_log_hz * np.exp(logstep * (mel - min_log_mel)))


@functools.lru_cache(maxsize=None)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                   f_max: float) -> np.ndarray:
  """(n_mels, n_fft // 2 + 1) float32 triangular filters, each of unit area (Slaney norm)."""
  if not 0 <= f_min < f_max <= sample_rate / 2:
    raise ValueError(f'mel codec needs 0 <= f_min < f_max <= sample_rate / 2, got f_min='
                     f'{f_min}, f_max={f_max} at {sample_rate} Hz')
  freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
  lower = (freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
  upper = (edges[2:, None] - freqs[None, :]) / np.diff(edges)[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
  if not np.all(weights.sum(axis=1) > 0):
    raise ValueError(f'mel codec: {n_mels} mel bands are too many for n_fft={n_fft} (some '
                     'bands cover no FFT bin); use fewer bands or a larger n_fft')
  return weights.astype(np.float32)


@functools.lru_cache(maxsize=None)
def hann_window(n: int) -> np.ndarray:
  """Periodic Hann window (n,), float32."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """Mono signals (B, N), N = T·hop -> complex spectra (B, T, n_fft // 2 + 1).

  Frame t is centred on sample t·hop (reflect padding); the frame centred on sample N is not
  computed, so T = N / hop.
  """
  b, n = x.shape
  pad = n_fft // 2
  padded = jnp.pad(x, ((0, 0), (pad, pad)), mode='reflect')
  idx = np.arange(n // hop)[:, None] * hop + np.arange(n_fft)[None, :]
  frames = padded[:, idx] * jnp.asarray(hann_window(n_fft))       # (B, T, n_fft)
  return jnp.fft.rfft(frames, axis=-1)


def istft(spec: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """Inverse of `stft` by windowed overlap-add: (B, T, n_fft // 2 + 1) -> (B, T·hop).

  Least-squares inverse (divides by the summed squared window), exact for a consistent
  spectrogram. Needs n_fft to be a multiple of hop.
  """
  b, t, _ = spec.shape
  r = n_fft // hop
  window = jnp.asarray(hann_window(n_fft))
  frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * window          # (B, T, n_fft)
  chunks = frames.reshape(b, t, r, hop)
  # Chunk k of frame t lands on output block t + k: sum the r shifted copies.
  out = sum(jnp.pad(chunks[:, :, k], ((0, 0), (k, r - 1 - k), (0, 0))) for k in range(r))
  wsq = (window ** 2).reshape(r, hop)
  norm = sum(jnp.pad(jnp.broadcast_to(wsq[k], (t, hop)), ((k, r - 1 - k), (0, 0)))
             for k in range(r))
  out = out / jnp.maximum(norm, 1e-8)                                # (B, T + r - 1, hop)
  pad = n_fft // 2
  return out.reshape(b, -1)[:, pad:pad + t * hop]


def nonnegative_magnitude(mel: jax.Array, basis: np.ndarray, iters: int) -> jax.Array:
  """Non-negative S (B, T, F) with basis @ S ≈ mel, from mel (B, T, M), basis (M, F) constant.

  Starts at the clipped pseudo-inverse and runs `iters` multiplicative NNLS updates
  S <- S · (Bᵀ mel) / (Bᵀ B S), which keep S >= 0 and do not increase ||B S - mel||².
  """
  pinv = np.linalg.pinv(np.asarray(basis, np.float64)).astype(np.float32)
  s = jnp.maximum(mel @ pinv.T, 1e-10)
  num = mel @ basis
  gram = jnp.asarray(basis.T @ basis)

  def update(_, s):
    return s * num / jnp.maximum(s @ gram, 1e-12)

  return jax.lax.fori_loop(0, iters, update, s)


def griffin_lim(magnitude: jax.Array, n_fft: int, hop: int, iters: int,
                momentum: float = 0.99, seed: int = 0) -> jax.Array:
  """Fast Griffin-Lim (Perraudin et al. 2013): magnitude (B, T, F) -> signal (B, T·hop).

  The initial phase is uniform from a fixed key, so the result is deterministic.
  """
  phase = jax.random.uniform(jax.random.key(seed), magnitude.shape, jnp.float32, 0, 2 * np.pi)
  angles = jnp.exp(1j * phase).astype(jnp.complex64)

  def step(_, carry):
    angles, previous = carry
    rebuilt = stft(istft(magnitude * angles, n_fft, hop), n_fft, hop)
    accelerated = rebuilt - (momentum / (1 + momentum)) * previous
    return accelerated / jnp.maximum(jnp.abs(accelerated), 1e-16), rebuilt

  angles, _ = jax.lax.fori_loop(0, iters, step, (angles, jnp.zeros_like(angles)))
  return istft(magnitude * angles, n_fft, hop)


class MelCodec(frame_codec.FrameCodec):
  """Normalised log-mel magnitude: (B, N, 2) -> (B, N / hop, n_mels) and back (lossy).

  Attributes:
    `frame_codec.FrameCodec`'s: hop (the STFT hop, default 256), in_channels / out_channels
      (must be 2), dtype.
    sample_rate: Hz of the waveform (sizes the mel filters).
    n_fft: STFT window (a multiple of hop).
    n_mels, f_min, f_max: mel bands and their frequency range (f_max <= sample_rate / 2).
    eps: floor added to the mel magnitude before the log (exact silence -> log(eps)).
    mean, std: latents are (log(mel + eps) - mean) / std (measured on training data).
    gl_iters, nnls_iters: decoder iterations (docs/latent_codec.md measures their effect).
  """
  hop: int = 256
  sample_rate: int = 16000
  n_fft: int = 512
  n_mels: int = 64
  f_min: float = 0.0
  f_max: float = 8000.0
  eps: float = 1e-3
  mean: float = 0.0
  std: float = 1.0
  gl_iters: int = 32
  nnls_iters: int = 16

  label = 'mel codec'

  def __post_init__(self):
    super().__post_init__()
    if self.n_fft % self.hop:
      raise ValueError(f'mel codec n_fft={self.n_fft} must be a positive multiple of hop='
                       f'{self.hop}')
    if not self.std > 0 or not self.eps > 0:
      raise ValueError(f'mel codec std and eps must be > 0, got std={self.std}, eps={self.eps}')
    self.basis()   # validates the filterbank at construction

  def basis(self) -> np.ndarray:
    return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)

  @property
  def latent_dim(self) -> int:
    return self.n_mels

  def _encode(self, audio: jax.Array) -> jax.Array:
    mono = jnp.mean(audio.astype(jnp.float32), axis=-1)
    mel = jnp.abs(stft(mono, self.n_fft, self.hop)) @ jnp.asarray(self.basis()).T
    return ((jnp.log(mel + self.eps) - self.mean) / self.std).astype(self.dtype)

  def log_mel_ceiling(self) -> float:
    """120 dB above the loudest mel value of a signal in [-1, 1] (no STFT bin exceeds the Hann
    window's sum, n_fft / 2). Far above anything a trained model makes, and low enough that exp
    and the NNLS products stay finite in float32."""
    loudest = self.n_fft / 2 * self.basis().sum(axis=1).max()
    return float(np.log(loudest * 1e6))

  def _decode(self, latents: jax.Array) -> jax.Array:
    """The same signal in both channels. Log-mel values are clipped at `log_mel_ceiling`, so
    that every finite latent decodes to finite audio (exp of an untrained model's latents
    overflowed the NNLS fit to NaN)."""
    log_mel = jnp.minimum(latents.astype(jnp.float32) * self.std + self.mean,
                          self.log_mel_ceiling())
    mel = jnp.maximum(jnp.exp(log_mel) - self.eps, 0.0)
    magnitude = nonnegative_magnitude(mel, self.basis(), self.nnls_iters)
    mono = griffin_lim(magnitude, self.n_fft, self.hop, self.gl_iters)
    return jnp.stack([mono, mono], axis=-1)

"""Synthetic sound-event categories: renderers and a dominant-frequency classifier.

Each category has a distinct timbre AND a distinct dominant-frequency band, so a
detector can classify a segment (or a short frame of it) from the peak of its
magnitude spectrum alone. All energy stays below ~7.3 kHz, so any sample rate
>= 16 kHz represents every category; the signals are defined in seconds and Hz
and therefore scale unchanged to 44.1 kHz.

Per-event random variation (from the caller's `np.random.Generator`):
  * pitch scale s ~ U[1 - PITCH_JITTER, 1 + PITCH_JITTER] (all frequencies * s),
  * peak amplitude ~ U[0.35, 0.7],
  * pan p ~ U[-0.4, 0.4]: channel gains (cos a, sin a), a = pi/4 * (1 + p),
  * the noise itself for 'hiss'.
Every event starts and ends with a FADE_S raised-cosine fade. Inside an event the
envelope stays >= 0.2 of its peak except for the intended silent gaps of 'alarm'
(<= 70 ms) and 'ticking' (~35 ms below 1%), so a detector that bridges gaps shorter than
~0.1 s recovers whole events.
"""
import numpy as np

PITCH_JITTER = 0.03
FADE_S = 0.005
MIN_SAMPLE_RATE = 16000

# category -> (lowest, highest) dominant frequency in Hz, jitter included.
CATEGORY_BANDS = {
    'buzz': (100.0, 120.0),
    'tone': (205.0, 235.0),
    'tremolo': (420.0, 460.0),
    'bell': (670.0, 730.0),
    'alarm': (1150.0, 1250.0),
    'warble': (1640.0, 1960.0),
    'rising chirp': (2320.0, 3300.0),
    'falling chirp': (3490.0, 4540.0),
    'hiss': (4850.0, 6180.0),
    'ticking': (6700.0, 7400.0),
}
CATEGORIES = tuple(CATEGORY_BANDS)


def _buzz(t, s, sr, rng):
  """Band-limited square wave, f0 = 110 Hz (odd harmonics k with 1/k, <= 4 kHz)."""
  f0 = 110.0 * s
  ks = np.arange(1, int(min(4000.0, 0.45 * sr) / f0) + 1, 2)
  return np.sin(2 * np.pi * f0 * np.outer(t, ks)) @ (1.0 / ks)


def _tone(t, s, sr, rng):
  """Pure sine at 220 Hz."""
  return np.sin(2 * np.pi * 220.0 * s * t)


def _tremolo(t, s, sr, rng):
  """440 Hz sine, amplitude modulated at 7 Hz between 0.2 and 1."""
  env = 1.0 - 0.8 * (0.5 - 0.5 * np.cos(2 * np.pi * 7.0 * t))
  return env * np.sin(2 * np.pi * 440.0 * s * t)


def _bell(t, s, sr, rng):
  """Inharmonic partials 700 Hz * (1, 2.76, 5.4), decaying to 0.2 at the event end."""
  dur = max(t[-1], 1.0 / sr)
  partials = (1.0, 2.76, 5.4)
  amps = (1.0, 0.5, 0.25)
  x = sum(a * np.sin(2 * np.pi * 700.0 * s * p * t) for p, a in zip(partials, amps))
  return x * np.exp(-1.6 * t / dur)


def _alarm(t, s, sr, rng):
  """1200 Hz beeps gated at 6 Hz with 60% duty (soft 5 ms gate edges)."""
  phase = (6.0 * t) % 1.0
  on = np.clip(np.minimum(phase, 0.6 - phase) / (6.0 * FADE_S), 0.0, 1.0)
  return np.sin(np.pi * on / 2) ** 2 * np.sin(2 * np.pi * 1200.0 * s * t)


def _warble(t, s, sr, rng):
  """FM tone: carrier 1800 Hz, vibrato 6 Hz, deviation +-100 Hz."""
  fc, fm, dev = 1800.0 * s, 6.0, 100.0 * s
  return np.sin(2 * np.pi * fc * t + dev / fm * np.sin(2 * np.pi * fm * t))


def _chirp(f_start, f_end):
  def render(t, s, sr, rng):
    dur = max(t[-1], 1.0 / sr)
    f0, f1 = f_start * s, f_end * s
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * dur)))
  render.__doc__ = f'Linear chirp {f_start:g} Hz -> {f_end:g} Hz over the event.'
  return render


def _hiss(t, s, sr, rng):
  """White noise band-passed (FFT mask) to 5-6 kHz."""
  n = t.shape[0]
  spec = np.fft.rfft(rng.standard_normal(n))
  freqs = np.fft.rfftfreq(n, 1.0 / sr)
  spec[(freqs < 5000.0 * s) | (freqs > 6000.0 * s)] = 0.0
  return np.fft.irfft(spec, n)


def _ticking(t, s, sr, rng):
  """Train of 7 kHz ticks (damped sines, tau = 4 ms) at 20 ticks per second."""
  period = 1.0 / (20.0 * s)
  local = t % period
  return np.exp(-local / 0.004) * np.sin(2 * np.pi * 7000.0 * s * local)


_RENDERERS = {
    'buzz': _buzz,
    'tone': _tone,
    'tremolo': _tremolo,
    'bell': _bell,
    'alarm': _alarm,
    'warble': _warble,
    'rising chirp': _chirp(2400.0, 3200.0),
    'falling chirp': _chirp(4400.0, 3600.0),
    'hiss': _hiss,
    'ticking': _ticking,
}


def _check(category, num_samples, sample_rate):
  if category not in _RENDERERS:
    raise ValueError(f'unknown category {category!r}; expected one of {CATEGORIES}')
  if sample_rate < MIN_SAMPLE_RATE:
    raise ValueError(f'sample_rate must be >= {MIN_SAMPLE_RATE}, got {sample_rate}')
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')


def render_mono(category, num_samples, sample_rate, pitch_scale=1.0, rng=None):
  """Renders one event with peak |x| = 1 and FADE_S fades at both ends.

  Args:
    category: one of CATEGORIES.
    num_samples: event length in samples.
    sample_rate: Hz, >= MIN_SAMPLE_RATE.
    pitch_scale: multiplies every frequency of the category.
    rng: np.random.Generator (only 'hiss' draws from it); default seed 0.

  Returns:
    (num_samples,) float64.
  """
  _check(category, num_samples, sample_rate)
  rng = np.random.default_rng(0) if rng is None else rng
  t = np.arange(num_samples) / sample_rate
  x = _RENDERERS[category](t, pitch_scale, sample_rate, rng)
  fade = min(int(round(FADE_S * sample_rate)), num_samples // 2)
  if fade > 0:
    ramp = np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / fade) ** 2
    x[:fade] *= ramp
    x[num_samples - fade:] *= ramp[::-1]
  return x / max(np.max(np.abs(x)), 1e-12)


def render_event(category, num_samples, sample_rate, rng):
  """Renders one event with seeded pitch, amplitude and pan variation.

  Args:
    category: one of CATEGORIES.
    num_samples: event length in samples.
    sample_rate: Hz, >= MIN_SAMPLE_RATE.
    rng: np.random.Generator; consumed deterministically.

  Returns:
    (num_samples, 2) float32 stereo waveform.
  """
  _check(category, num_samples, sample_rate)
  pitch = rng.uniform(1.0 - PITCH_JITTER, 1.0 + PITCH_JITTER)
  amp = rng.uniform(0.35, 0.7)
  angle = 0.25 * np.pi * (1.0 + rng.uniform(-0.4, 0.4))
  x = amp * render_mono(category, num_samples, sample_rate, pitch, rng)
  return np.stack([x * np.cos(angle), x * np.sin(angle)], axis=-1).astype(np.float32)


def dominant_frequency(x, sample_rate):
  """Frequency (Hz) of the largest peak of the Hann-windowed magnitude spectrum.

  Args:
    x: (N,) mono or (N, C) multichannel waveform (channels are averaged).
    sample_rate: Hz.
  """
  x = np.asarray(x, np.float64)
  if x.ndim == 2:
    x = x.mean(axis=-1)
  n = x.shape[0]
  nfft = 1 << int(np.ceil(np.log2(max(n, sample_rate))))  # <= 1 Hz bins
  mag = np.abs(np.fft.rfft(x * np.hanning(n), nfft))
  return float(np.argmax(mag) * sample_rate / nfft)


def classify_frequency(freq_hz):
  """Category whose CATEGORY_BANDS entry contains freq_hz, or None."""
  for name, (lo, hi) in CATEGORY_BANDS.items():
    if lo <= freq_hz <= hi:
      return name
  return None

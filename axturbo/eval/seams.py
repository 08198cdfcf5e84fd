"""Seam metric of long-form clips: is a join audible as a discontinuity?

Spectral flux (the L2 norm of the frame-to-frame change of the STFT magnitude) jumps at any click,
step or sudden change of timbre. At each seam the metric takes the largest flux within
`radius_s` of the join, and compares it with the same statistic (the largest flux within
`radius_s`) at every sounding frame inside the windows, at least `2 * radius_s` from any seam:

  ratio_k = seam flux_k / median of the in-window flux.

Seams fall at arbitrary points of the content, so on a seamless clip the median ratio over seams
is about 1 (an event onset that happens to fall on a seam raises one ratio, not the median); a
click at every seam raises it by orders of magnitude. `reference` runs the same measure at the
same positions of an audio that has no seams (the held-out clip itself), for scale.
"""
from typing import Sequence

import numpy as np


def stft_magnitude(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
  """(N, C) or (N,) -> (frames, n_fft // 2 + 1) magnitude of the mono mix; frame t is centred
  on sample t * hop (zero padding at both ends, periodic Hann window)."""
  wave = np.asarray(wave, np.float64)
  mono = wave.mean(axis=-1) if wave.ndim == 2 else wave
  padded = np.pad(mono, (n_fft // 2, n_fft // 2))
  frames = 1 + (padded.shape[0] - n_fft) // hop
  idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
  window = np.hanning(n_fft + 1)[:-1]
  return np.abs(np.fft.rfft(padded[idx] * window, axis=-1))


def spectral_flux(mag: np.ndarray) -> np.ndarray:
  """STFT magnitude (frames, bins) -> (frames,) ||M_t - M_{t-1}||_2 (0 for the first frame):
  the change into frame t."""
  flux = np.zeros(mag.shape[0])
  flux[1:] = np.linalg.norm(np.diff(mag, axis=0), axis=1)
  return flux


def stft_size(sample_rate: int) -> tuple[int, int]:
  """(n_fft, hop): ~32 ms windows (a power of two) with 4x overlap, at any sample rate."""
  n_fft = 1 << int(np.ceil(np.log2(0.032 * sample_rate)))
  return n_fft, n_fft // 4


def local_max(x: np.ndarray, radius: int) -> np.ndarray:
  """(T,) -> (T,) max of x over [t - radius, t + radius] (clipped at the ends)."""
  padded = np.pad(x, radius, mode='constant', constant_values=-np.inf)
  windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1)
  return windows.max(axis=1)


def seam_report(wave: np.ndarray, seams: Sequence[int], sample_rate: int,
                radius_s: float = 0.02, active_db: float = 40.0) -> dict:
  """The seam metric of one clip (module docstring).

  Args:
    wave: (N, C) audio.
    seams: sample positions of the joins (where a window's own audio begins).
    sample_rate: Hz.
    radius_s: half-width of the neighbourhood searched at each position.
    active_db: in-window frames count towards the median when their magnitude is within this
      many dB of the loudest frame; silence would otherwise make the median 0 in clips that are
      mostly silent (the embedded data), and any sound at a seam an infinite ratio.

  Returns:
    {'seam_flux': [per seam], 'inwindow_median_flux', 'silent': fraction of seams with no
     sounding frame within radius_s (a model that ends every window in silence leaves a gap at
     every seam, which the flux alone reads as smooth), 'ratios': [per seam], 'median_ratio',
     'max_ratio', 'over_2x': fraction of seams with ratio > 2}; the ratios are None without
     seams or without a sounding in-window frame.
  """
  n_fft, hop = stft_size(sample_rate)
  mag = stft_magnitude(wave, n_fft, hop)
  flux = spectral_flux(mag)
  radius = max(1, int(round(radius_s * sample_rate / hop)))
  peak = local_max(flux, radius)
  level = local_max(np.linalg.norm(mag, axis=1), radius)
  at = np.clip(np.round(np.asarray(seams, np.float64) / hop).astype(int), 0, len(flux) - 1)
  near = np.zeros(len(flux), bool)
  for t in at:
    near[max(0, t - 2 * radius):t + 2 * radius + 1] = True
  sounding = level > level.max(initial=0.0) * 10.0 ** (-active_db / 20.0)
  inside = peak[~near & sounding]
  report = {'seam_flux': [float(peak[t]) for t in at],
            'inwindow_median_flux': float(np.median(inside)) if inside.size else None,
            'silent': float(np.mean(~sounding[at])) if len(at) else None,
            'ratios': None, 'median_ratio': None, 'max_ratio': None, 'over_2x': None}
  if not len(at) or not inside.size or report['inwindow_median_flux'] <= 0:
    return report
  ratios = peak[at] / report['inwindow_median_flux']
  report.update(ratios=[float(r) for r in ratios], median_ratio=float(np.median(ratios)),
                max_ratio=float(ratios.max()), over_2x=float(np.mean(ratios > 2.0)))
  return report


def seam_positions(windows: Sequence[dict]) -> list[int]:
  """Sample positions of the joins of a long clip from its sidecar's 'windows' records: where
  each window after the first begins its own audio."""
  return [int(w['samples'][1]) for w in windows[1:]]

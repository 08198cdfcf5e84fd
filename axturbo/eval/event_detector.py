"""Signal-processing detector of the embedded dataset's synthetic sound events.

Every category of `axturbo.data.event_sounds` has its own dominant-frequency band, so a frame of
audio can be labelled from the peak of its spectrum. The detector:
  1. downmixes to mono and cuts the clip into frames (hop 10 ms);
  2. marks a frame *active* when its RMS (20 ms window) exceeds `rel_threshold_db` below the
     clip's loudest frame (and an absolute floor), since generated audio is never exactly
     silent;
  3. labels each active frame with the category whose band holds its dominant frequency
     (64 ms Hann window, zero-padded spectrum with parabolic peak interpolation), provided at
     least `min_band_energy` of the frame's spectral energy lies in that band (widened by the
     window's main lobe); otherwise the frame is noise and gets no label. This is what rejects
     white noise and broadband artefacts;
  4. joins runs of frames with the same label across gaps shorter than `bridge_s` (events of
     the dataset are >= 0.2 s apart, and 'alarm'/'ticking' have < 0.1 s internal gaps), and
     drops events shorter than `min_event_s`.
The result is [(category, start_s, end_s)] in time order, non-overlapping.
"""
import dataclasses

import numpy as np

from axturbo.data import event_sounds


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  hop_s: float = 0.01             # frame hop
  energy_window_s: float = 0.02   # RMS window (short: onsets within ~10 ms)
  freq_window_s: float = 0.064    # spectral window (long: ~30 Hz main lobe separates 110/220 Hz)
  rel_threshold_db: float = 30.0  # active if RMS > peak RMS - this (in-event dips are <= 20 dB)
  abs_threshold: float = 1e-5     # RMS floor: numerically silent clips have no events
  min_band_energy: float = 0.4    # fraction of frame energy in the category band (+- main lobe)
  bridge_s: float = 0.1           # join same-category runs separated by less than this
  min_event_s: float = 0.1        # drop shorter detections


def _mono(audio) -> np.ndarray:
  x = np.asarray(audio, np.float64)
  if x.ndim == 2:
    x = x.mean(axis=-1)
  if x.ndim != 1:
    raise ValueError(f'audio must be (N,) or (N, C), got shape {x.shape}')
  return x


def _frames(x: np.ndarray, centers: np.ndarray, length: int) -> np.ndarray:
  """(F, length) windows of x centred on the sample indices `centers`, zero outside x."""
  half = length // 2
  padded = np.pad(x, (half, length))
  return padded[centers[:, None] + np.arange(length)[None]]


def _band_table():
  names = event_sounds.CATEGORIES
  bands = np.array([event_sounds.CATEGORY_BANDS[n] for n in names])
  return names, bands[:, 0], bands[:, 1]


def frame_labels(audio, sample_rate: int, cfg: DetectorConfig = DetectorConfig()
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-frame analysis.

  Returns:
    times (F,) frame centres in seconds, active (F,) bool, labels (F,) int: index into
    event_sounds.CATEGORIES, or -1 (inactive or not attributable to any category).
  """
  x = _mono(audio)
  hop = max(1, int(round(cfg.hop_s * sample_rate)))
  centers = np.arange(0, x.shape[0], hop)
  times = centers / sample_rate
  e_len = max(2, int(round(cfg.energy_window_s * sample_rate)))
  rms = np.sqrt(np.mean(_frames(x, centers, e_len) ** 2, axis=-1))
  peak = rms.max(initial=0.0)
  active = rms > max(peak * 10.0 ** (-cfg.rel_threshold_db / 20.0), cfg.abs_threshold)
  labels = np.full(centers.shape, -1)
  idx = np.flatnonzero(active)
  if idx.size == 0:
    return times, active, labels
  f_len = int(round(cfg.freq_window_s * sample_rate))
  nfft = 1 << int(np.ceil(np.log2(4 * f_len)))
  window = np.hanning(f_len)
  freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
  lobe = 2.0 * sample_rate / f_len        # Hann main-lobe half width
  names, lo, hi = _band_table()
  in_band = (freqs[None] >= lo[:, None] - lobe) & (freqs[None] <= hi[:, None] + lobe)  # (K, bins)
  for start in range(0, idx.size, 64):    # chunks bound the memory at 44.1 kHz
    chunk = idx[start:start + 64]
    power = np.abs(np.fft.rfft(_frames(x, centers[chunk], f_len) * window, nfft)) ** 2
    k = np.clip(np.argmax(power, axis=-1), 1, freqs.shape[0] - 2)
    rows = np.arange(chunk.size)
    # Parabolic interpolation of the log-power peak: sub-bin frequency estimate.
    a, b, c = (np.log(power[rows, k + d] + 1e-30) for d in (-1, 0, 1))
    denom = a - 2 * b + c
    offset = np.where(denom < 0, 0.5 * (a - c) / np.where(denom < 0, denom, -1.0), 0.0)
    peak_hz = (k + np.clip(offset, -0.5, 0.5)) * sample_rate / nfft
    cat = np.full(chunk.size, -1)
    for j in range(len(names)):
      cat[(peak_hz >= lo[j]) & (peak_hz <= hi[j])] = j
    band_energy = np.einsum('fb,kb->fk', power, in_band.astype(np.float64))
    share = band_energy[rows, np.maximum(cat, 0)] / np.maximum(power.sum(-1), 1e-30)
    labels[chunk] = np.where((cat >= 0) & (share >= cfg.min_band_energy), cat, -1)
  return times, active, labels


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
  """[(label, first, last_exclusive)] of maximal runs of equal labels >= 0."""
  out, i = [], 0
  while i < labels.shape[0]:
    j = i
    while j < labels.shape[0] and labels[j] == labels[i]:
      j += 1
    if labels[i] >= 0:
      out.append((int(labels[i]), i, j))
    i = j
  return out


def detect_events(audio, sample_rate: int, cfg: DetectorConfig = DetectorConfig()
                  ) -> list[tuple[str, float, float]]:
  """Detected events [(category, start_s, end_s)] of a (N,) or (N, C) clip, in time order."""
  times, _, labels = frame_labels(audio, sample_rate, cfg)
  hop = times[1] - times[0] if times.shape[0] > 1 else cfg.hop_s
  bridge = int(np.floor(cfg.bridge_s / hop + 1e-9))
  merged: list[list[int]] = []
  for label, first, last in _runs(labels):
    # Join with the previous run of the same label if only a short gap lies between them.
    if merged and merged[-1][0] == label and first - merged[-1][2] < bridge:
      merged[-1][2] = last
    else:
      merged.append([label, first, last])
  # Same-label runs are joined before short runs are dropped (a 'ticking' tick alone is ~20 ms);
  # a short blip of another label between two runs is removed here and healed afterwards.
  names = event_sounds.CATEGORIES
  events = []
  for label, first, last in merged:
    start, end = times[first] - 0.5 * hop, times[last - 1] + 0.5 * hop
    if end - start >= cfg.min_event_s - 1e-9:
      events.append((names[label], max(0.0, float(start)), float(end)))
  return _merge_across_blips(events, cfg.bridge_s)


def _merge_across_blips(events, bridge_s):
  """After dropping short blips, join same-category neighbours closer than bridge_s."""
  out = []
  for ev in events:
    if out and out[-1][0] == ev[0] and ev[1] - out[-1][2] < bridge_s:
      out[-1] = (ev[0], out[-1][1], ev[2])
    else:
      out.append(ev)
  return out

"""Synthetic video track: a category-coloured shape on black while its event sounds.

Frame f shows time f / fps; it contains the shape of event (c, start, end) iff
start <= f / fps < end, and is all zero otherwise. Events never overlap, so a
frame shows at most one shape. The shape's centre is jittered per event by up to
+-0.2 of the half-width; its colour and geometry identify the category.
"""
import numpy as np

from axturbo.data import event_sounds as ev

# category -> (RGB colour, shape name); colours are pairwise distinct.
CATEGORY_LOOKS = {
    'buzz': ((255, 0, 0), 'square'),
    'tone': ((0, 255, 0), 'circle'),
    'tremolo': ((0, 0, 255), 'diamond'),
    'bell': ((255, 255, 0), 'triangle'),
    'alarm': ((255, 0, 255), 'ring'),
    'warble': ((0, 255, 255), 'hbar'),
    'rising chirp': ((255, 128, 0), 'vbar'),
    'falling chirp': ((128, 0, 255), 'plus'),
    'hiss': ((255, 255, 255), 'cross'),
    'ticking': ((0, 128, 255), 'frame'),
}
_RADIUS = 0.45
MIN_VIDEO_SIZE = 8


def shape_mask(shape, size, cx=0.0, cy=0.0):
  """(size, size) bool mask of a shape centred at (cx, cy) in [-1, 1] coordinates."""
  grid = (np.arange(size) + 0.5) / size * 2.0 - 1.0
  dy, dx = grid[:, None] - cy, grid[None, :] - cx
  ax, ay, r = np.abs(dx), np.abs(dy), _RADIUS
  cheb, dist = np.maximum(ax, ay), np.hypot(dx, dy)
  masks = {
      'square': cheb <= r,
      'circle': dist <= r,
      'diamond': ax + ay <= 1.2 * r,
      'triangle': (ay <= r) & (ax <= 0.5 * (dy + r)),
      'ring': (dist <= r) & (dist >= 0.55 * r),
      'hbar': (ay <= 0.35 * r) & (ax <= 1.3 * r),
      'vbar': (ax <= 0.35 * r) & (ay <= 1.3 * r),
      'plus': ((ax <= 0.3 * r) | (ay <= 0.3 * r)) & (cheb <= r),
      'cross': (np.abs(ax - ay) <= 0.3 * r) & (cheb <= r),
      'frame': (cheb <= r) & (cheb >= 0.6 * r),
  }
  if shape not in masks:
    raise ValueError(f'unknown shape {shape!r}')
  return masks[shape]


def num_frames(total_ticks, fps, tick_s):
  """ceil(duration * fps) computed exactly on the tick grid."""
  per = int(round(1.0 / tick_s))
  return (total_ticks * fps + per - 1) // per


def render_video(events, total_ticks, fps, size, rng, tick_s):
  """Renders the clip's frames.

  Args:
    events: [(category, start_tick, end_tick)], non-overlapping.
    total_ticks: clip duration in ticks of tick_s seconds.
    fps: integer frame rate.
    size: frame height = width in pixels, >= MIN_VIDEO_SIZE.
    rng: np.random.Generator for the per-event centre jitter.
    tick_s: tick length in seconds (1 / tick_s must be an integer).

  Returns:
    (F, size, size, 3) uint8, F = num_frames(total_ticks, fps, tick_s).
  """
  if size < MIN_VIDEO_SIZE:
    raise ValueError(f'video_size must be >= {MIN_VIDEO_SIZE}, got {size}')
  per = int(round(1.0 / tick_s))
  frames = np.zeros((num_frames(total_ticks, fps, tick_s), size, size, 3), np.uint8)
  f = np.arange(frames.shape[0])
  for cat, start, end in events:
    if cat not in CATEGORY_LOOKS:
      raise ValueError(f'unknown category {cat!r}; expected one of {ev.CATEGORIES}')
    colour, shape = CATEGORY_LOOKS[cat]
    cx, cy = rng.uniform(-0.2, 0.2, size=2)
    mask = shape_mask(shape, size, cx, cy)
    # Integer test of start <= f / fps < end with times in ticks.
    active = (f * per >= start * fps) & (f * per < end * fps)
    frames[active[:, None, None] & mask[None]] = colour
  return frames

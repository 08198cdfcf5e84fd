"""Conditioning tasks: which modalities a training example carries.

Every source first yields a *base example* (fixed shapes, all modalities it has):
  'audio' (N, 2) float32 target; 'length' int32 real (non-padding) samples of 'audio';
  'frames' (F, S, S, 3) uint8; 'has_video' bool; 'sync' (Ls, Ds) float32;
  'prompt' (P, 2) float32 explicit audio prompt; 'has_prompt' bool; 'caption' str;
  'task' int32: a fixed task id (manifest `type`), or -1 = draw from `data.task_probs`.
`make_task_example` then keeps only the task's modalities; absent ones are the official
missing-modality defaults (§2.4): zero frames and sync, zero prompt, empty caption.

Task ids (the 'task' field of a batch):
  0 text_to_audio        caption only                       (official text_condition-*)
  1 video_to_audio       frames + sync, caption ''           (video_condition-*)
  2 text_video_to_audio  caption + frames + sync             (text+video_condition-*)
  3 inpaint              caption + prompt = the target with a span zeroed, time-aligned
  4 continuation         caption + prompt = the target's first part, LEFT-padded (official
                         `load_and_process_audio` convention: the prompt ends where audio starts)
  5 audio_to_audio       caption + prompt = the target window itself (audio_condition-audio)
  6 all                  caption + frames + sync + prompt          (uni_condition-*)
"""
import numpy as np

from axturbo.data import audio_io

TASKS = ('text_to_audio', 'video_to_audio', 'text_video_to_audio', 'inpaint', 'continuation',
         'audio_to_audio', 'all')
TASK_IDS = {name: i for i, name in enumerate(TASKS)}
_USES_VIDEO = frozenset({1, 2, 6})
_USES_TEXT = frozenset({0, 2, 3, 4, 5, 6})

# Official manifest `type` (prefix before '-audio' / '-music') -> task.
OFFICIAL_TYPES = {
    'text_condition': 0, 'video_condition': 1, 'text+video_condition': 2,
    'audio_condition': 5, 'uni_condition': 6,
}


def task_from_type(kind: str) -> int:
  """Task id of an official manifest `type` such as 'text_condition-audio'."""
  prefix, _, suffix = str(kind).rpartition('-')
  if prefix not in OFFICIAL_TYPES or suffix not in ('audio', 'music'):
    raise ValueError(f'unknown manifest type {kind!r}; expected <{"|".join(OFFICIAL_TYPES)}>'
                     '-<audio|music>')
  return OFFICIAL_TYPES[prefix]


def task_probabilities(task_probs) -> np.ndarray:
  """(len(TASKS),) probabilities from a {task name: weight} mapping (normalised)."""
  probs = np.zeros(len(TASKS))
  for name, p in dict(task_probs).items():
    if name not in TASK_IDS:
      raise ValueError(f'data.task_probs: unknown task {name!r}; known: {TASKS}')
    if not p >= 0:
      raise ValueError(f'data.task_probs[{name!r}] must be >= 0, got {p}')
    probs[TASK_IDS[name]] = p
  if probs.sum() <= 0:
    raise ValueError('data.task_probs must give some task a positive probability')
  return probs / probs.sum()


def draw_task(rng: np.random.Generator, probs: np.ndarray, has_video: bool) -> int:
  """A task id ~ probs, renormalised over the tasks this example can serve."""
  p = probs.copy()
  if not has_video:
    p[list(_USES_VIDEO)] = 0.0
  if p.sum() <= 0:  # only video tasks asked for, but the clip has none
    p = np.where(np.isin(np.arange(len(TASKS)), list(_USES_VIDEO)), 0.0, 1.0)
  return int(rng.choice(len(TASKS), p=p / p.sum()))


def inpaint_prompt(audio, length, prompt_samples, rng, ratio=(0.1, 0.5)):
  """(P, 2): the target with a random span of ratio*length samples zeroed, right-padded."""
  span = int(length * rng.uniform(*ratio))
  start = int(rng.integers(0, max(length - span, 0) + 1))
  out = audio.copy()
  out[start:start + span] = 0.0
  return audio_io.pad_crop(out, 0, prompt_samples)


def continuation_prompt(audio, length, prompt_samples, rng, ratio=(0.25, 0.75)):
  """(P, 2): the target's first ratio*length samples, left-padded with zeros."""
  keep = min(max(1, int(length * rng.uniform(*ratio))), prompt_samples)
  return audio_io.left_pad_crop(audio[:keep], prompt_samples)


def make_task_example(base: dict, rng: np.random.Generator, probs: np.ndarray,
                      inpaint_ratio=(0.1, 0.5), continuation_ratio=(0.25, 0.75),
                      flip_p=0.5) -> dict:
  """Base example -> conditioning for one task (module docstring); caption not tokenized.

  probs: (len(TASKS),) task probabilities for base['task'] == -1. The target (and prompt) are
  negated with probability flip_p (official random phase flip), then clamped to [-1, 1].
  """
  task = int(base['task'])
  if task < 0:
    task = draw_task(rng, probs, bool(base['has_video']))
  audio, length = base['audio'], int(base['length'])
  p_len = base['prompt'].shape[0]
  if task == 3:
    prompt = inpaint_prompt(audio, length, p_len, rng, inpaint_ratio)
  elif task == 4:
    if bool(base['has_prompt']):
      prompt = base['prompt']
    else:
      prompt = continuation_prompt(audio, length, p_len, rng, continuation_ratio)
  elif task in (5, 6):
    prompt = base['prompt'] if bool(base['has_prompt']) else audio_io.pad_crop(audio, 0, p_len)
  else:
    prompt = np.zeros_like(base['prompt'])
  video = task in _USES_VIDEO and bool(base['has_video'])
  # One sign for target and prompt keeps inpainting/continuation consistent (the official
  # loader flips only the target; its prompt is cut from the unflipped file).
  sign = np.float32(-1.0 if rng.random() < flip_p else 1.0)
  return {
      'audio': np.clip(sign * audio, -1.0, 1.0),
      'prompt': np.clip(sign * prompt, -1.0, 1.0),
      'frames': base['frames'] if video else np.zeros_like(base['frames']),
      'sync': base['sync'] if video else np.zeros_like(base['sync']),
      'caption': str(base['caption']) if task in _USES_TEXT else '',
      'task': np.int32(task),
  }

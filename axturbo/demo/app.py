"""What the demo page does, without the page: check a form, run it, write its files.

A form (the page's fields) becomes a request (the conditions of one clip) and sampler options;
`check_form` refuses a bad one with a ValueError whose message names the field, and the page
shows that message. `Demo.run` makes one clip through `_generate`, the only call into the
generation API, and writes its files with the writers `sample.py` uses
(`axturbo.generation.jobs.save_results`: WAV, spectrogram PNG, the input video muxed with the
new audio, JSON sidecar).
"""
import dataclasses
import json
import pathlib
import threading
import time
from typing import Callable

import numpy as np

# The tasks the page offers, as in sample.py: (inputs the task needs, inputs it may also take).
# 'text' is the caption, 'span' the inpainting span, 'keep' keep_unmasked.
TASKS = {
    'text-to-audio': ({'text'}, set()),
    'text-to-music': ({'text'}, set()),
    'video-to-audio': ({'video'}, {'text'}),
    'video-to-music': ({'video'}, {'text'}),
    'text+video': ({'text', 'video'}, set()),
    'image-to-audio': ({'image'}, {'text'}),
    'inpainting': ({'audio', 'span'}, {'text', 'keep'}),
    'continuation': ({'audio'}, {'text', 'keep'}),
}
# The caption a task uses when the field is empty (the quickstart's demo inputs, and the
# instruction the official models were trained with for video-to-music).
DEFAULT_CAPTIONS = {'video-to-music': 'Generate music for the video'}
_FIELD_NAMES = {'text': 'Caption', 'video': 'Video', 'image': 'Image', 'audio': 'Audio',
                'span': 'Inpaint span', 'keep': 'Keep unmasked'}


@dataclasses.dataclass(frozen=True)
class Form:
  """The page's fields, as Gradio hands them over (None for an empty field)."""
  task: str
  caption: str = ''
  video: str | None = None
  image: str | None = None
  audio: str | None = None
  inpaint: str = ''    # 'START:END' in seconds, as sample.py --inpaint
  keep_unmasked: bool = False
  duration: float | None = None
  sampler: str | None = None
  steps: float | None = None
  cfg: float | None = None
  seed: float | None = 0


def check_form(form: Form) -> tuple[dict, dict]:
  """-> (request fields, sampler fields); a ValueError naming the field for bad input.

  Request fields: text, video, image, audio, inpaint, continuation, keep_unmasked, duration_s.
  Sampler fields: sampler, steps, cfg_scale, seed. Values the model checks itself (a file that
  does not decode, a span past the end of the audio, a student's CFG) are left to it: its
  messages name the file or value too.
  """
  if form.task not in TASKS:
    raise ValueError(f'Task: unknown task {form.task!r}; choose one of {", ".join(TASKS)}')
  needs, may = TASKS[form.task]
  caption = (form.caption or '').strip()
  span = (form.inpaint or '').strip()
  given = {'text': bool(caption), 'video': bool(form.video), 'image': bool(form.image),
           'audio': bool(form.audio), 'span': bool(span),
           'keep': bool(form.keep_unmasked)}
  for name in sorted(needs):
    if not given[name]:
      what = 'is empty' if name == 'text' else 'is missing'
      raise ValueError(f'{_FIELD_NAMES[name]} {what}: {form.task} needs one')
  for name, present in given.items():
    if present and name not in needs | may:
      raise ValueError(f'{_FIELD_NAMES[name]}: {form.task} does not use it; clear it or '
                       'choose another task')
  for name in ('video', 'image', 'audio'):
    path = getattr(form, name)
    if path and not pathlib.Path(path).is_file():
      raise ValueError(f'{_FIELD_NAMES[name]}: {path} is not a file')
  inpaint = None
  if 'span' in needs:
    from axturbo.generation import jobs
    try:
      inpaint = jobs.parse_span(span)
    except ValueError as e:
      raise ValueError(f'Inpaint span: {e}') from None
    if not all(np.isfinite(inpaint)) or not 0 <= inpaint[0] < inpaint[1]:
      raise ValueError(f'Inpaint span: must satisfy 0 <= start < end, got {inpaint[0]:g} to '
                       f'{inpaint[1]:g} s')
  duration = form.duration if form.duration not in (None, 0) else None
  if duration is not None and not (np.isfinite(duration) and duration > 0):
    raise ValueError(f'Duration: must be > 0 seconds (0: one window), got {duration:g}')
  request = {'text': caption or DEFAULT_CAPTIONS.get(form.task, ''),
             'video': form.video or None, 'image': form.image or None,
             'audio': form.audio or None, 'inpaint': inpaint,
             'continuation': form.task == 'continuation',
             'keep_unmasked': bool(form.keep_unmasked), 'duration_s': duration}
  # The CFG field is the teacher's: a student run leaves it out (the student uses none).
  use_cfg = form.cfg is not None and form.sampler != 'student'
  sampler = {'sampler': form.sampler or None,
             'steps': _whole(form.steps, 'Steps'),
             'cfg_scale': float(form.cfg) if use_cfg else None,
             'seed': _whole(form.seed, 'Seed') or 0}
  if sampler['seed'] < 0:
    raise ValueError(f'Seed: must be >= 0, got {sampler["seed"]}')
  return request, sampler


def _whole(value, field: str) -> int | None:
  if value is None:
    return None
  if not np.isfinite(value) or value != int(value):
    raise ValueError(f'{field}: must be a whole number, got {value}')
  return int(value)


def _generate(gen, request: dict, sampler: dict):
  """The one call into the generation API: request fields (check_form) + sampler fields -> one
  `Result` (a long clip, window by window, when the request has a duration)."""
  from axturbo.generation import Request, SamplerOptions, generate_long
  req = Request(**request)
  opts = SamplerOptions(sampler=sampler['sampler'], steps=sampler['steps'],
                        cfg_scale=sampler['cfg_scale'], seed=sampler['seed'])
  if req.duration_s is None:
    [result] = gen.generate(req, opts)
  else:
    [result] = generate_long(gen, req, opts)
  return result


# The shapes compiled at start: what the default page settings run for each kind of input.
# Each compiles the conditioning, the sampler and the decoder for one batch of one.
PRECOMPILE = {
    'text': lambda m: {'text': 'First a bell, then a buzz.'},
    'video': lambda m: {'video': np.zeros((m.video.num_frames, m.clip.image_size,
                                           m.clip.image_size, 3), np.uint8)},
    'audio': lambda m: {'audio': np.zeros((m.prompt_samples // 2, 2), np.float32),
                        'continuation': True},
}


def blank_request(**fields) -> dict:
  return {'text': '', 'video': None, 'image': None, 'audio': None, 'inpaint': None,
          'continuation': False, 'keep_unmasked': False, 'duration_s': None, **fields}


def default_sampler(gen) -> dict:
  """The page's default sampler fields for this checkpoint (its kind's defaults)."""
  opts = gen.resolve()
  return {'sampler': opts.sampler, 'steps': opts.steps,
          'cfg_scale': opts.cfg_scale if opts.sampler == 'teacher' else None, 'seed': 0}


class Demo:
  """A generator, an output folder and a lock: one request at a time (the generator's caches
  are not thread-safe; the page queues the rest)."""

  def __init__(self, gen, out_dir):
    from axturbo.generation import jobs
    self.gen = gen
    self.out = jobs.writable_dir(out_dir, flag='--out')
    self.compiled: list[tuple[str, float]] = []
    self._lock = threading.Lock()

  def precompile(self, names=tuple(PRECOMPILE), log: Callable[[str], None] = print) -> None:
    """Runs one request of each default shape, so that the first visitor does not compile."""
    for name in names:
      if name not in PRECOMPILE:
        raise ValueError(f'--precompile: unknown shape {name!r}; choose from '
                         f'{", ".join(PRECOMPILE)}')
    sampler = default_sampler(self.gen)
    for name in names:
      start = time.perf_counter()
      with self._lock:
        _generate(self.gen, blank_request(**PRECOMPILE[name](self.gen.config)), sampler)
      self.compiled.append((name, time.perf_counter() - start))
      log(f'precompiled the {name} shape ({sampler["sampler"]}, {sampler["steps"]} steps) in '
          f'{self.compiled[-1][1]:.1f} s')

  def run(self, request: dict, sampler: dict, progress: Callable[[float, str], None] = None
          ) -> dict:
    """Generates one clip and writes its files -> its sidecar record (record['files'])."""
    from axturbo.eval import seams
    from axturbo.generation import jobs
    progress = progress or (lambda frac, desc: None)
    with self._lock:
      progress(0.05, 'generating (a new shape compiles first)')
      result = _generate(self.gen, request, sampler)
      if 'windows' in result.meta:  # a long clip: the seam metric at every join, as sample.py
        result.meta['seams'] = seams.seam_report(
            result.waveform, seams.seam_positions(result.meta['windows']), result.sample_rate)
      progress(0.9, 'writing the files')
      stem = jobs.output_stem(jobs.first_free_index(self.out), request['text'] or 'untitled')
      video = request['video'] if isinstance(request['video'], str) else None
      [record] = jobs.save_results([result], self.out, [stem], videos=[video])
    return record


def status_line(record: dict) -> str:
  """The line the page shows under a result."""
  lat = record['latency_s']
  line = (f"{record['duration_s']:.2f} s of audio in {lat['total_s']:.2f} s "
          f"({record['sampler']}, {record['steps']} steps, NFE {record['nfe']}, seed "
          f"{record['seed']})")
  if record.get('includes_compilation'):
    line += ('; this request compiled a new shape (its first of this kind), the next ones '
             'of the same shape skip that')
  if 'num_windows' in record:
    line += f"; {record['num_windows']} windows"
  return line


def load_examples(inputs_dir) -> list[list]:
  """The quickstart's demo inputs (data/make_demo_inputs.py: tasks.jsonl and the task names
  in tasks.txt) -> rows of (task, caption, video, image, audio, inpaint span 'START:END')."""
  inputs_dir = pathlib.Path(inputs_dir)
  jobs_file, names_file = inputs_dir / 'tasks.jsonl', inputs_dir / 'tasks.txt'
  for f in (jobs_file, names_file):
    if not f.is_file():
      raise FileNotFoundError(f'{f}: not found (python -m data.make_demo_inputs writes it)')
  names = [line.split(maxsplit=1)[1] for line in names_file.read_text().splitlines()
           if line.strip()]
  lines = [json.loads(line) for line in jobs_file.read_text().splitlines() if line.strip()]
  if len(names) != len(lines):
    raise ValueError(f'{inputs_dir}: {len(lines)} tasks in tasks.jsonl but {len(names)} names '
                     'in tasks.txt')
  rows = []
  for name, job in zip(names, lines):
    if name not in TASKS:
      raise ValueError(f'{names_file}: unknown task {name!r}')
    span = job.get('inpaint') or ''
    if not isinstance(span, str):  # [start, end]
      span = f'{span[0]}:{span[1]}'
    rows.append([name, job.get('text', ''), job.get('video'), job.get('image'),
                 job.get('audio'), span])
  return rows

r"""Evaluate checkpoints: event benchmark, reference-set metrics, long clips, efficiency table.

  python -m axturbo.eval SUITE [flags]        python -m axturbo.eval SUITE --help

Suites (each writes --out/results.json and --out/results.md; each has its own flags, and a flag
of another suite is refused; `--suite SUITE` is the former spelling of the word, and a command
without a suite runs events):
  events    the embedded held-out split (axturbo/eval/benchmark.py): T2A-bench-style Cat / Cnt /
            Ord / TS accuracy of text-to-audio, video sync of video-to-audio and text+video,
            inpainting and continuation accuracy.
              python -m axturbo.eval events --checkpoint ckpt/ --out eval/ \
                  [--steps 4] [--teacher --cfg 6] [--clips 64] [--batch_size 8] \
                  [--t2a_clips 288] [--first_clip 0] [--category hiss]
  manifest  FD / KL / IS (PANNs CNN14) of generations for the captions of an official manifest
            vs its audio (axturbo/eval/manifest_suite.py); needs a local CNN14 checkpoint.
              python -m axturbo.eval manifest --checkpoint ckpt/ \
                  --manifest test.jsonl --cnn14 Cnn14_16k_mAP=0.438.pth --cnn14_variant 16k \
                  --out eval/
  long      long clips (axturbo/eval/long_clips.py): held-out clips --long_windows windows long,
            generated window by window (--overlap_s, --join) and scored on the whole clip, with
            the seam metric at every join; and clips shorter than a window (--short_s), trimmed.
              python -m axturbo.eval long --checkpoint ckpt/ --out eval/ \
                  [--long_windows 4] [--overlap_s 0.944] [--tail_s 0.16] [--join latent|crossfade]
  table     the paper's Table II protocol (axturbo/eval/efficiency.py): per sampler and step
            count, NFE, latency (batch 1, mean ± std over --runs after --warmup), RTF and the
            event benchmark; teacher rows use Euler + CFG --cfg, student rows denoise-renoise.
              python -m axturbo.eval table --teacher_checkpoint T/ \
                  --student_checkpoint S/ --out eval/ [--teacher_steps 4,25,50] \
                  [--student_steps 1,2,4] [--undistilled_steps 4] [--runs 20] [--warmup 5]
"""
import json
import math
import pathlib
import sys
import textwrap

from absl import app
from absl import flags
from absl import logging
from etils import epath

from axturbo.eval import benchmark
from axturbo.generation import jobs
from axturbo.generation.request import LongOptions
from axturbo.generation.request import SamplerOptions
from axturbo.runtime import compile_cache

_SUITE = flags.DEFINE_enum('suite', None, ['events', 'manifest', 'long', 'table'],
                          'Former spelling of the suite word: `--suite events` = `events`.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Checkpoint directory (local or gs://).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (results.json, results.md).')
_STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps (default: 4 student, 250 teacher).')
_TEACHER = flags.DEFINE_bool('teacher', False, 'Use the teacher sampler (Euler + CFG).')
_CFG = flags.DEFINE_float('cfg', None, 'CFG scale of the teacher sampler (default 6).')
_CLIPS = flags.DEFINE_integer('clips', 64, 'Held-out clips (manifest: manifest lines).')
_T2A_CLIPS = flags.DEFINE_integer(
    't2a_clips', None, 'Held-out clips for t2a (default: --clips). Cnt, Ord and TS each judge '
    'the clips whose caption asks for them, about a quarter: 288 gives each at least 64.')
_FIRST = flags.DEFINE_integer('first_clip', 0, 'Number of the first held-out clip scored (tune '
                              'on some clips, report on others).')
_TASKS = flags.DEFINE_list('tasks', list(benchmark.TASKS), 'Event benchmark tasks.')
_CATEGORY = flags.DEFINE_string(
    'category', None, 'Also score the t2a clips that hold this category apart from the others, '
    'and how often it is detected in them (a fine-tune on a new sound: docs/finetuning.md).')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Prompts generated per call.')
_SEED = flags.DEFINE_integer('seed', 0, 'Noise seed (clip i uses seed + i).')
_KEEP = flags.DEFINE_bool('keep_unmasked', False,
                          'Inpainting/continuation: pin the latents of the given audio.')
_DURATION = flags.DEFINE_float('duration_s', None, 'Held-out clip length (default: as training).')
_LONG_WINDOWS = flags.DEFINE_float('long_windows', 4, 'Long clips: length in generated windows.')
_OVERLAP = flags.DEFINE_float('overlap_s', None, 'Long clips: window overlap (default half).')
_TAIL = flags.DEFINE_float('tail_s', 0.0, 'Long clips: unused end of each generated window.')
_JOIN = flags.DEFINE_enum('join', 'latent', ['latent', 'crossfade'], 'Long clips: the join.')
_SHORT = flags.DEFINE_float('short_s', None, 'Short clips: length (default half a window).')
_MANIFEST = flags.DEFINE_string('manifest', None, 'Manifest JSONL (official manifest format).')
_ROOT = flags.DEFINE_string('root', '', 'Root of relative manifest paths.')
_CNN14 = flags.DEFINE_string('cnn14', None, 'Local PANNs CNN14 checkpoint (.pth).')
_CNN14_VARIANT = flags.DEFINE_enum('cnn14_variant', '32k', ['32k', '16k'], 'CNN14 front end.')
_TEACHER_CKPT = flags.DEFINE_string('teacher_checkpoint', None, 'Teacher checkpoint: its rows.')
_STUDENT_CKPT = flags.DEFINE_string('student_checkpoint', None, 'Student checkpoint: its rows.')
_TEACHER_STEPS = flags.DEFINE_list('teacher_steps', ['4', '25', '50'], 'Teacher rows: Euler step counts.')
_STUDENT_STEPS = flags.DEFINE_list('student_steps', ['1', '2', '4'], 'Student rows: step counts.')
_UNDISTILLED_STEPS = flags.DEFINE_list(
    'undistilled_steps', [], 'Rows of the student sampler on the teacher checkpoint.')
_RUNS = flags.DEFINE_integer('runs', 20, 'Timed runs per row.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed warm-up runs per row.')
_COMPILE_CACHE = compile_cache.define_flag()

# Each suite's flags, in --help order; a flag of this module outside the chosen suite's list is
# refused (it would be silently ignored otherwise). --compile_cache and absl's own are shared.
_SAMPLER = ('steps', 'teacher', 'cfg', 'seed')
SUITES = {
    'events': ('checkpoint', 'out', *_SAMPLER, 'clips', 't2a_clips', 'first_clip', 'tasks',
               'category', 'batch_size', 'keep_unmasked', 'duration_s'),
    'manifest': ('checkpoint', 'out', 'manifest', 'root', 'cnn14', 'cnn14_variant', *_SAMPLER,
                 'clips', 'batch_size'),
    'long': ('checkpoint', 'out', *_SAMPLER, 'clips', 'tasks', 'batch_size', 'long_windows',
             'overlap_s', 'tail_s', 'join', 'short_s'),
    'table': ('teacher_checkpoint', 'student_checkpoint', 'out', 'teacher_steps',
              'student_steps', 'undistilled_steps', 'cfg', 'runs', 'warmup', 'clips',
              't2a_clips', 'tasks', 'batch_size', 'seed', 'duration_s'),
}
_HELP = ('--help', '-help', '-h', '--helpshort', '-helpshort', '-?')


def _load(path: str, kind: str | None = None):
  if not path:
    raise ValueError('a checkpoint directory is required (--checkpoint / --teacher_checkpoint / '
                     '--student_checkpoint)')
  if not epath.Path(path).is_dir():   # a local folder or a URL (gs://...)
    raise FileNotFoundError(f'checkpoint {path!r} is not a directory')
  return jobs.load_generator(path, kind)


def _sampler_options(gen) -> SamplerOptions:
  """--teacher, --steps, --cfg and --seed, with the checkpoint kind's defaults."""
  return gen.resolve(SamplerOptions(sampler='teacher' if _TEACHER.value else None,
                                    steps=_STEPS.value, cfg_scale=_CFG.value, seed=_SEED.value))


def _heldout(m) -> list[dict]:
  """The held-out clips of --clips and --t2a_clips (the max of the two, from --first_clip)."""
  for name, value in (('clips', _CLIPS.value), ('t2a_clips', _T2A_CLIPS.value)):
    if value is not None and value < 1:
      raise ValueError(f'--{name} must be >= 1, got {value}')
  return benchmark.heldout_clips(m, max(_CLIPS.value, _T2A_CLIPS.value or 0), _DURATION.value,
                                 _FIRST.value)


def _clips_per_task() -> dict[str, int]:
  return {t: _T2A_CLIPS.value if t == 't2a' and _T2A_CLIPS.value else _CLIPS.value
          for t in _TASKS.value}


def _clips_phrase() -> str:
  first = f' from number {_FIRST.value}' if _FIRST.value else ''
  if _T2A_CLIPS.value in (None, _CLIPS.value) or 't2a' not in _TASKS.value:
    return f'{_CLIPS.value} held-out clips{first}'
  return f'{_T2A_CLIPS.value} held-out clips for t2a, {_CLIPS.value} for the other tasks{first}'


def _events() -> tuple[dict, str]:
  from axturbo.eval import efficiency
  if _CATEGORY.value is not None:
    benchmark.check_category(_CATEGORY.value, _TASKS.value)
  gen = _load(_CHECKPOINT.value)
  options = _sampler_options(gen)
  sampler, steps, cfg = options.sampler, options.steps, options.cfg_scale
  clips = _heldout(gen.config)
  requests = benchmark.make_requests(clips, _TASKS.value, _clips_per_task())
  bar = jobs.Progress(len(requests), f'{sampler} {steps} steps')
  generate_fn = benchmark.model_generator(gen, options, batch_size=_BATCH.value,
                                          keep_unmasked=_KEEP.value, progress=bar)
  result = benchmark.run_events(clips, generate_fn, gen.config.sample_rate, _TASKS.value,
                                _clips_per_task())
  bar.close()
  header = {'suite': 'events', 'checkpoint': str(_CHECKPOINT.value), 'kind': gen.kind,
            'sampler': sampler, 'steps': steps, 'cfg_scale': cfg,
            'nfe': efficiency.nfe(sampler, steps, cfg), 'seed': _SEED.value,
            'clips': _CLIPS.value, 't2a_clips': _T2A_CLIPS.value or _CLIPS.value,
            'first_clip': _FIRST.value, 'duration_s': clips[0]['duration_s'],
            'sample_rate': gen.config.sample_rate,
            'tasks': list(_TASKS.value),
            'keep_unmasked': _KEEP.value}
  title = (f'Event benchmark: {_CHECKPOINT.value}, {sampler} sampler, {steps} steps, '
           f'CFG {cfg:g}, NFE {header["nfe"]}, {_clips_phrase()}')
  markdown = benchmark.events_markdown(result, title)
  if _CATEGORY.value is not None:
    header['category'] = benchmark.category_split(result, clips, _CATEGORY.value)
    markdown += benchmark.category_markdown(header['category'])
  return {**header, **result}, markdown


def _long() -> tuple[dict, str]:
  from axturbo.eval import efficiency
  from axturbo.eval import long_clips
  gen = _load(_CHECKPOINT.value)
  options = _sampler_options(gen)
  sampler, steps, cfg = options.sampler, options.steps, options.cfg_scale
  m, frames = gen.config, gen.output_samples // gen.hop
  tasks = _TASKS.value if flags.FLAGS['tasks'].present else list(long_clips.LONG_TASKS)
  # Clip lengths in generated windows, so that every --overlap_s / --tail_s scores the same clips.
  duration = long_clips.grid_s(_LONG_WINDOWS.value * gen.output_samples / m.sample_rate)
  short_s = long_clips.grid_s(_SHORT.value or gen.output_samples / m.sample_rate / 2)
  windows = long_clips.plan(m.sample_rate, frames, gen.hop, duration, _OVERLAP.value,
                            _TAIL.value, names=(f'--long_windows={_LONG_WINDOWS.value:g}',
                                                '--overlap_s', '--tail_s'))
  window = windows[0].length / m.sample_rate
  long = long_clips.long_clips(m, _CLIPS.value, duration)
  short = benchmark.heldout_clips(m, _CLIPS.value, short_s)
  bar = jobs.Progress(_CLIPS.value * len(tasks), f'{sampler} {steps} steps')
  generate_fn = benchmark.model_generator(
      gen, options, batch_size=_BATCH.value, progress=bar,
      long=LongOptions(overlap_s=_OVERLAP.value, tail_s=_TAIL.value, join=_JOIN.value))
  result = long_clips.run_long(long, short, generate_fn, windows, m.sample_rate, tasks)
  bar.close()
  header = {'suite': 'long', 'checkpoint': str(_CHECKPOINT.value), 'kind': gen.kind,
            'sampler': sampler, 'steps': steps, 'cfg_scale': cfg,
            'nfe_per_window': efficiency.nfe(sampler, steps, cfg), 'seed': _SEED.value,
            'clips': _CLIPS.value, 'duration_s': duration, 'short_s': short[0]['duration_s'],
            'window_s': window, 'num_windows': len(windows),
            'overlap_s': windows[1].overlap / m.sample_rate if len(windows) > 1 else None,
            'tail_s': _TAIL.value, 'join': _JOIN.value, 'long_seeds': [c['seed'] for c in long],
            'sample_rate': m.sample_rate, 'tasks': tasks}
  title = (f'Long clips: {_CHECKPOINT.value}, {sampler} sampler, {steps} steps, CFG {cfg:g}; '
           f'{_CLIPS.value} held-out clips of {duration:g} s ({len(windows)} windows of '
           f'{window:g} s used, overlap {header["overlap_s"]} s, {_JOIN.value} join), short clips '
           f'of {header["short_s"]:g} s')
  return {**header, **result}, long_clips.long_markdown(result, title)


def _manifest() -> tuple[dict, str]:
  from axturbo.eval import manifest_suite
  if not _MANIFEST.value:
    raise ValueError('manifest needs --manifest FILE.jsonl (official manifest format)')
  if not _CNN14.value:
    raise ValueError('manifest needs --cnn14 PATH: a local PANNs CNN14 checkpoint '
                     '(Cnn14_mAP=0.431.pth with --cnn14_variant 32k, or Cnn14_16k_mAP=0.438.pth '
                     'with --cnn14_variant 16k, from zenodo.org/record/3987831) to compute '
                     'FD / KL / IS')
  gen = _load(_CHECKPOINT.value)
  options = _sampler_options(gen)
  sampler, steps, cfg = options.sampler, options.steps, options.cfg_scale
  embed = manifest_suite.cnn14_embedder(_CNN14.value, _CNN14_VARIANT.value,
                                        gen.config.sample_rate)
  clips, requests = manifest_suite.load_references(_MANIFEST.value, _ROOT.value, gen.config,
                                                   gen.output_samples, _CLIPS.value)
  bar = jobs.Progress(len(requests), f'{sampler} {steps} steps')
  waves = benchmark.model_generator(gen, options, batch_size=_BATCH.value,
                                    progress=bar)(requests)
  bar.close()
  result = {'suite': 'manifest', 'checkpoint': str(_CHECKPOINT.value), 'manifest': _MANIFEST.value,
            'cnn14': _CNN14.value, 'sampler': sampler, 'steps': steps, 'cfg_scale': cfg,
            'seed': _SEED.value,
            'metrics': manifest_suite.reference_metrics([c['waveform'] for c in clips], waves,
                                                        embed)}
  title = f'Reference metrics: {_CHECKPOINT.value} on {_MANIFEST.value}, {sampler} {steps} steps'
  return result, manifest_suite.manifest_markdown(result, title)


def _table() -> tuple[dict, str]:
  from axturbo.eval import efficiency
  if not _TEACHER_CKPT.value and not _STUDENT_CKPT.value:
    raise ValueError('table needs --teacher_checkpoint and/or --student_checkpoint')
  cfg = 6.0 if _CFG.value is None else _CFG.value
  rows = efficiency.table_rows(jobs.parse_step_counts(_TEACHER_STEPS.value, 'teacher_steps'),
                               jobs.parse_step_counts(_STUDENT_STEPS.value, 'student_steps'), cfg,
                               bool(_TEACHER_CKPT.value), bool(_STUDENT_CKPT.value),
                               jobs.parse_step_counts(_UNDISTILLED_STEPS.value,
                                                      'undistilled_steps')
                               if _UNDISTILLED_STEPS.value else ())
  gens = {}
  if _TEACHER_CKPT.value:
    gens['teacher'] = _load(_TEACHER_CKPT.value, kind='teacher')
  if _STUDENT_CKPT.value:
    gens['student'] = _load(_STUDENT_CKPT.value, kind='student')
  m = next(iter(gens.values())).config
  clips = _heldout(m)
  results = efficiency.run_table(gens, rows, clips, runs=_RUNS.value, warmup=_WARMUP.value,
                                 batch_size=_BATCH.value, seed=_SEED.value, tasks=_TASKS.value,
                                 clips_per_task=_clips_per_task(),
                                 progress_factory=jobs.Progress)
  result = {'suite': 'table', 'teacher_checkpoint': _TEACHER_CKPT.value,
            'student_checkpoint': _STUDENT_CKPT.value, 'clips': _CLIPS.value,
            't2a_clips': _T2A_CLIPS.value or _CLIPS.value,
            'runs': _RUNS.value, 'warmup': _WARMUP.value, 'seed': _SEED.value,
            'tasks': list(_TASKS.value), 'rows': results}
  title = (f'Efficiency and event benchmark ({_clips_phrase()}, latency at batch '
           f'size 1 over {_RUNS.value} runs after {_WARMUP.value} warm-ups)')
  return result, efficiency.table_markdown(results, title)


def _own_flags() -> list[str]:
  return [f.name for f in flags.FLAGS.get_flags_for_module(__name__) if f.name != 'suite']


def suite_help(suite: str) -> str:
  """`python -m axturbo.eval SUITE --help`: the suite's line of the docstring and its flags."""
  lines = [f'python -m axturbo.eval {suite} [flags]', '']
  doc = __doc__.split('\n')
  start = next(i for i, line in enumerate(doc) if line.startswith(f'  {suite} '))
  end = next((i for i in range(start + 1, len(doc)) if doc[i][:3].strip()), len(doc))
  lines += [line for line in doc[start:end] if line.strip()] + ['', 'flags:']
  for name in (*SUITES[suite], 'compile_cache'):
    f = flags.FLAGS[name]
    spelled = f'--[no]{name}' if f.boolean else f'--{name}'
    default = '' if f.default is None else f' (default: {f.default_as_str})'
    if (suite, name) == ('long', 'tasks'):   # _long's own default when --tasks is absent
      from axturbo.eval import long_clips
      default = f" (default: '{','.join(long_clips.LONG_TASKS)}')"
    lines += textwrap.wrap(f'{spelled}: {f.help}{default}', 98, initial_indent='  ',
                           subsequent_indent='      ')
  lines += ['', 'Shared absl flags (--verbosity, ...): --helpfull.']
  return '\n'.join(lines)


def parse_flags(argv: list[str]) -> str:
  """absl flags, then the suite (the word, or --suite, else events); returns the suite.

  `SUITE --help` prints that suite's flags only; a flag of another suite exits with one line.
  """
  wants_help = any(a in _HELP for a in argv[1:])
  try:
    rest = flags.FLAGS([a for a in argv if a not in _HELP])
  except flags.Error as e:
    sys.exit(f'error: {e} (see python -m axturbo.eval SUITE --help)')
  words = rest[1:]
  if len(words) > 1:
    sys.exit(f'error: unexpected arguments {words[1:]}: give one suite, then its flags')
  if words and words[0] not in SUITES:
    sys.exit(f'error: unknown suite {words[0]!r}: choose from {", ".join(SUITES)}')
  if words and _SUITE.value and _SUITE.value != words[0]:
    sys.exit(f'error: suite {words[0]!r} and --suite {_SUITE.value} disagree')
  suite = words[0] if words else _SUITE.value
  if wants_help:
    print(suite_help(suite) if suite else __doc__ + '\nEach suite\'s flags: '
          'python -m axturbo.eval SUITE --help')
    sys.exit(0)
  suite = suite or 'events'
  for name in _own_flags():
    if flags.FLAGS[name].present and name not in SUITES[suite]:
      owners = ', '.join(s for s, names in SUITES.items() if name in names)
      sys.exit(f'error: --{name} is not a flag of the {suite} suite (it is one of {owners}); '
               f'see python -m axturbo.eval {suite} --help')
  return suite


def main(suite: str):
  if not _OUT.value:
    sys.exit(f'error: --out is required (see python -m axturbo.eval {suite} --help)')
  for name, flag, low in (('clips', _CLIPS, 1), ('batch_size', _BATCH, 1), ('runs', _RUNS, 1),
                          ('warmup', _WARMUP, 0)):
    if flag.value < low:
      sys.exit(f'error: --{name} must be >= {low}, got {flag.value}')
  if _DURATION.value is not None and not (math.isfinite(_DURATION.value) and _DURATION.value > 0):
    sys.exit(f'error: --duration_s must be a finite number of seconds > 0, got {_DURATION.value}')
  if not (math.isfinite(_LONG_WINDOWS.value) and _LONG_WINDOWS.value > 0):
    sys.exit(f'error: --long_windows must be a finite number of windows > 0, got '
             f'{_LONG_WINDOWS.value}')
  if not flags.FLAGS['verbosity'].present:  # per-prompt INFO lines would bury the progress bar
    logging.set_verbosity(logging.WARNING)
  suite = {'events': _events, 'manifest': _manifest, 'table': _table, 'long': _long}[suite]
  try:
    out = jobs.writable_dir(_OUT.value)
    compile_cache.enable(_COMPILE_CACHE.value, '--compile_cache')
    result, markdown = suite()
  except (ValueError, FileNotFoundError, FloatingPointError) as e:  # incl. media errors
    sys.exit(f'error: {e}')
  (out / 'results.json').write_text(json.dumps(result, indent=2, default=_jsonable))
  (out / 'results.md').write_text(markdown)
  print(markdown)
  print(f'wrote {out / "results.json"} and {out / "results.md"}')
  print(compile_cache.summary())


def _jsonable(x):
  if hasattr(x, 'tolist'):
    return x.tolist()
  raise TypeError(f'not JSON serializable: {type(x).__name__}')


def run():
  app.run(main, flags_parser=parse_flags)

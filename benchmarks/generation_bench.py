r"""Generation latency per stage, NFE and real-time factor: teacher (Euler + CFG) vs student.

  python -m benchmarks.generation_bench --checkpoint out/quickstart/student/export \
      [--batch 1] [--runs 10] [--warmup 2] [--teacher_steps 4,25,50,250] [--student_steps 1,2,4]
  python -m benchmarks.generation_bench --config configs/official.py [--config.model.dtype=bfloat16]

Without --checkpoint the model of --config is built with random weights (nothing is downloaded;
latency does not depend on the weights). A config whose tokenizer is a local Hugging Face folder
gets the byte tokenizer at the same `max_length` instead: the token ids differ, the shapes and the
text encoder's cost do not.

Each setting runs `Generator.generate` on `--batch` text prompts (no video, no audio prompt: the
text-to-audio path), `--warmup` times untimed (compilation), then `--runs` times; the stage
latencies are the ones the Generator records in `Result.meta['latency_s']` (it blocks on device
results at each stage boundary; decoding includes the copy to the host). The table gives medians.
Real-time factor = total wall time / seconds of audio generated (batch included); < 1 is faster
than real time.
"""
import dataclasses
import json
import pathlib
import statistics
import sys

from absl import app, flags
from ml_collections import config_flags

from benchmarks import random_weights


_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'axturbo checkpoint directory.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file; used (random weights) only without --checkpoint.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Prompts generated together.')
_RUNS = flags.DEFINE_integer('runs', 10, 'Timed runs per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed runs per setting (compilation), >= 1.')
_TEACHER_STEPS = flags.DEFINE_list('teacher_steps', ['4', '25', '50'],
                                   'Euler step counts of the teacher sampler.')
_STUDENT_STEPS = flags.DEFINE_list('student_steps', ['1', '2', '4'],
                                   'Step counts of the student sampler (1, 2 or 4).')
_CFG = flags.DEFINE_float('cfg', 6.0, 'CFG scale of the teacher sampler (official: 6).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random weights and of the noise.')
_JSON = flags.DEFINE_string('json_out', None, 'Also write the rows as JSON to this file.')

STAGES = ('inputs_s', 'conditioning_s', 'sampling_s', 'decoding_s', 'total_s')
PROMPTS = ('A dog barks twice, then a bell rings.', 'Rain on a tin roof with distant thunder.',
           'A violin melody over soft piano chords.', 'Footsteps on gravel, then a door slams.')


def measure(gen, sampler: str, steps: int, cfg_scale: float, batch: int, runs: int,
            warmup: int, seed: int) -> dict:
  """Median stage latencies (s) of `runs` timed calls after `warmup` untimed ones.

  Returns:
    dict with sampler, steps, cfg_scale, nfe, the STAGES medians, 'rtf' (median total / seconds
    of audio in the batch), 'audio_s' (seconds per clip) and 'runs'.
  """
  from axturbo.generation import Request, SamplerOptions
  requests = [Request(text=PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
  options = SamplerOptions(sampler=sampler, steps=steps,
                           cfg_scale=cfg_scale if sampler == 'teacher' else None)
  for i in range(warmup):
    gen.generate(requests, dataclasses.replace(options, seed=seed + i))
  stages = {k: [] for k in STAGES}
  meta = None
  for i in range(runs):
    meta = gen.generate(requests, dataclasses.replace(options, seed=seed + warmup + i))[0].meta
    if meta['includes_compilation']:
      raise RuntimeError('a timed run compiled; raise --warmup')
    for k in STAGES:
      stages[k].append(meta['latency_s'][k])
  row = {k: statistics.median(v) for k, v in stages.items()}
  row.update(sampler=sampler, steps=steps, cfg_scale=meta['cfg_scale'], nfe=meta['nfe'],
             audio_s=meta['duration_s'], runs=runs,
             rtf=row['total_s'] / (batch * meta['duration_s']))
  return row


def format_table(rows: list[dict]) -> str:
  """Markdown table of `measure` rows (milliseconds), newline-terminated."""
  from axturbo.eval import benchmark
  headers = ('sampler', 'steps', 'CFG', 'NFE', 'inputs ms', 'conditioning ms', 'sampling ms',
             'decode ms', 'total ms', 'RTF')
  cells = [(r['sampler'], r['steps'], f'{r["cfg_scale"]:g}' if r['sampler'] == 'teacher' else '-',
            r['nfe'], *(f'{1e3 * r[k]:.1f}' for k in STAGES), f'{r["rtf"]:.4f}') for r in rows]
  return benchmark.markdown_table(headers, cells)


def speedup(rows: list[dict], teacher_steps: int = 50, student_steps: int = 4) -> str | None:
  """'teacher-50 / student-4: ...' total and sampling-stage ratios, if both rows exist."""
  find = lambda s, n: next((r for r in rows if r['sampler'] == s and r['steps'] == n), None)
  t, s = find('teacher', teacher_steps), find('student', student_steps)
  if t is None or s is None:
    return None
  return (f'teacher-{teacher_steps} / student-{student_steps}: '
          f'total {t["total_s"] / s["total_s"]:.1f}x, '
          f'sampling {t["sampling_s"] / s["sampling_s"]:.1f}x, NFE {t["nfe"] / s["nfe"]:.1f}x')


def main(argv):
  del argv
  from axturbo.generation import jobs, sampling
  try:
    if _WARMUP.value < 1:
      raise ValueError('--warmup must be >= 1 (the first call of each setting compiles)')
    if _RUNS.value < 1 or _BATCH.value < 1:
      raise ValueError('--runs and --batch must be >= 1')
    teacher_steps = jobs.parse_step_counts(_TEACHER_STEPS.value, 'teacher_steps')
    student_steps = jobs.parse_step_counts(_STUDENT_STEPS.value, 'student_steps')
    bad = [s for s in student_steps if s not in sampling.STUDENT_STEPS]
    if bad:
      raise ValueError(f'--student_steps: the student sampler takes {sampling.STUDENT_STEPS} '
                       f'steps, got {bad}')
    gen, source = random_weights.checkpoint_or_random(_CHECKPOINT.value, _CONFIG.value,
                                                      _SEED.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  import jax
  m = gen.config
  print(f'{source}; device {jax.devices()[0].device_kind} x{jax.device_count()}; '
        f'dtype {m.dtype}; batch {_BATCH.value}; {gen.output_samples / m.sample_rate:.3f} s of '
        f'audio per clip at {m.sample_rate} Hz; medians of {_RUNS.value} runs after '
        f'{_WARMUP.value} warm-up(s)', flush=True)
  settings = ([('teacher', n) for n in teacher_steps] + [('student', n) for n in student_steps])
  rows = []
  for sampler, steps in settings:
    rows.append(measure(gen, sampler, steps, _CFG.value, _BATCH.value, _RUNS.value,
                        _WARMUP.value, _SEED.value))
    print(f'  {sampler} {steps} steps: total {1e3 * rows[-1]["total_s"]:.1f} ms', flush=True)
  print(format_table(rows), end='')
  ratio = speedup(rows)
  if ratio:
    print(ratio)
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(rows, indent=2))


if __name__ == '__main__':
  app.run(main)

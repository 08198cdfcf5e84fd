r"""Latency of a long clip (default 60 s), per window and in total: `longform.generate_long`.

  python -m benchmarks.longform_bench --checkpoint out/quickstart/student/export \
      [--duration 60] [--tail 0.16] [--join latent] [--runs 3] [--samplers student:4,teacher:25]
  python -m benchmarks.longform_bench --config configs/official.py --samplers student:4

Without --checkpoint the model of --config is built with random weights
(`benchmarks.random_weights`; latency does not depend on the weights). Each sampler setting runs
one untimed clip (it compiles window 0, the windows with a prompt, and the one-pass decode of the
joined latents), then `--runs` timed clips. Per window: the latency `Generator.generate` records
for it (inputs, conditioning, sampling, decoding of that window; the decode is needed for the
next window's prompt); window 0 has no audio prompt and is listed apart. Join: the one-pass decode
of the whole clip ('latent') or the crossfades ('crossfade'). Total: wall time of the call. Medians
over the runs (per-window figures: medians over all windows >= 1 of all runs).
"""
import dataclasses
import json
import pathlib
import statistics
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from benchmarks import random_weights

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'axturbo checkpoint directory.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file; used (random weights) only without --checkpoint.')
_DURATION = flags.DEFINE_float('duration', 60.0, 'Seconds per clip.')
_OVERLAP = flags.DEFINE_float('overlap', None, 'Window overlap (default: half a window).')
_TAIL = flags.DEFINE_float('tail', 0.0, 'Unused end of each generated window (s).')
_JOIN = flags.DEFINE_enum('join', 'latent', ['latent', 'crossfade'], 'How windows are joined.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Clips generated together.')
_RUNS = flags.DEFINE_integer('runs', 3, 'Timed clips per setting.')
_SAMPLERS = flags.DEFINE_list('samplers', ['student:4', 'teacher:25'],
                              'sampler:steps settings (teacher with CFG --cfg).')
_CFG = flags.DEFINE_float('cfg', 6.0, 'CFG scale of the teacher sampler.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random weights and of the noise.')
_JSON = flags.DEFINE_string('json_out', None, 'Also write the rows as JSON to this file.')

STAGES = ('inputs_s', 'conditioning_s', 'sampling_s', 'decoding_s', 'total_s')
PROMPT = 'Rain on a tin roof with distant thunder.'


def parse_settings(values) -> list[tuple[str, int]]:
  """['student:4', 'teacher:25'] -> [('student', 4), ('teacher', 25)]."""
  out = []
  for v in values:
    name, _, steps = v.partition(':')
    if name not in ('student', 'teacher') or not steps.isdigit():
      raise ValueError(f'--samplers: expected student:N or teacher:N, got {v!r}')
    out.append((name, int(steps)))
  return out


def measure(gen, sampler: str, steps: int, cfg_scale: float, runs: int) -> dict:
  """Medians of `runs` timed long clips after one untimed one (module docstring)."""
  from axturbo.generation import LongOptions, Request, SamplerOptions, generate_long
  long = LongOptions(overlap_s=_OVERLAP.value, tail_s=_TAIL.value, join=_JOIN.value)
  options = SamplerOptions(sampler=sampler, steps=steps,
                           cfg_scale=cfg_scale if sampler == 'teacher' else None)
  requests = [Request(text=PROMPT, duration_s=_DURATION.value)] * _BATCH.value
  generate_long(gen, requests, dataclasses.replace(options, seed=_SEED.value), long=long)
  first, later, join, total = [], {k: [] for k in STAGES}, [], []
  meta = None
  for i in range(runs):
    meta = generate_long(gen, requests, dataclasses.replace(options, seed=_SEED.value + 1 + i),
                         long=long)[0].meta
    if meta['includes_compilation']:
      raise RuntimeError('a timed clip compiled a window; nothing should compile after the first')
    first.append(meta['windows'][0]['latency_s']['total_s'])
    for w in meta['windows'][1:]:
      for k in STAGES:
        later[k].append(w['latency_s'][k])
    join.append(meta['latency_s']['join_s'])
    total.append(meta['latency_s']['total_s'])
  row = {f'window_{k}': statistics.median(v) for k, v in later.items()}
  row.update(sampler=sampler, steps=steps, nfe_per_window=meta['nfe'],
             windows=meta['num_windows'], window_s=meta['window_s'], overlap_s=meta['overlap_s'],
             tail_s=meta['tail_s'], join=meta['join'], audio_s=meta['duration_s'],
             batch=_BATCH.value, runs=runs, window0_s=statistics.median(first),
             join_s=statistics.median(join), total_s=statistics.median(total),
             rtf=statistics.median(total) / (_BATCH.value * meta['duration_s']))
  return row


def format_table(rows: list[dict]) -> str:
  """Markdown table of `measure` rows, newline-terminated."""
  from axturbo.eval import benchmark
  headers = ('sampler', 'steps', 'NFE / window', 'windows', 'window 0 s',
             'window k: conditioning ms', 'sampling ms', 'decode ms', 'total ms', 'join s',
             'total s', 'RTF')
  cells = [(r['sampler'], r['steps'], r['nfe_per_window'], r['windows'], f'{r["window0_s"]:.3f}',
            *(f'{1e3 * r[f"window_{k}"]:.1f}' for k in STAGES[1:]), f'{r["join_s"]:.3f}',
            f'{r["total_s"]:.2f}', f'{r["rtf"]:.3f}') for r in rows]
  return benchmark.markdown_table(headers, cells)


def main(argv):
  del argv
  try:
    settings = parse_settings(_SAMPLERS.value)
    if _RUNS.value < 1 or _BATCH.value < 1:
      raise ValueError('--runs and --batch must be >= 1')
    gen, source = random_weights.checkpoint_or_random(_CHECKPOINT.value, _CONFIG.value,
                                                      _SEED.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  import jax
  print(f'{source}; device {jax.devices()[0].device_kind} x{jax.device_count()}; batch '
        f'{_BATCH.value}; {_DURATION.value:g} s clips, {_JOIN.value} join; medians of '
        f'{_RUNS.value} runs after one untimed clip', flush=True)
  rows = []
  for sampler, steps in settings:
    try:
      rows.append(measure(gen, sampler, steps, _CFG.value, _RUNS.value))
    except ValueError as e:
      sys.exit(f'error: {e}')
    print(f'  {sampler} {steps} steps: {rows[-1]["total_s"]:.2f} s per clip', flush=True)
  print(format_table(rows), end='')
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(rows, indent=2))


if __name__ == '__main__':
  app.run(main)

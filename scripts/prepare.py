r"""Decodes a dataset once into ArrayRecord shards of fixed-shape base examples.

  python -m scripts.prepare --config configs/official.py \
      --config.data.manifest=data/train_manifest.jsonl --out /data/records --split train
  # then train with --config.data.source=records --config.data.records_dir=/data/records

Reads config.data.source ('manifest': .jsonl or audio folder; 'embedded'), decodes each example
as the training pipeline would (resample, stereo, official crop, video frames, sync; the crop
offset is drawn once, from data.seed), and writes <out>/<split>-*-of-*.array_record plus
<out>/<split>.json. Tasks, phase flips and tokenization stay at training time. Bad samples are
skipped and counted (data.fail_fast=True stops instead). Shows a progress line on stderr.
"""
import multiprocessing
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from axturbo.data import audio_io
from axturbo.data import pipeline
from axturbo.data import records

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).')
_OUT = flags.DEFINE_string('out', None, 'Output folder for the shards.')
_SPLIT = flags.DEFINE_enum('split', 'train', list(pipeline.SPLITS), 'Split to prepare.')
_SHARDS = flags.DEFINE_integer('num_shards', 8, 'Number of ArrayRecord shards.')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Decoding processes (0 = this process).')

_STATE = {}


def _init_worker(config, split):
  _STATE['source'], _STATE['decode'] = pipeline.base_source(config, split)
  _STATE['seed'], _STATE['fail_fast'] = int(config.data.seed), bool(config.data.fail_fast)


def decode_one(index):
  """(base example or None, skip message) for source item `index` (uses _init_worker state)."""
  item = _STATE['source'][index]
  if _STATE['decode'] is None:
    return item, ''
  rng = np.random.default_rng([_STATE['seed'], index])
  try:
    return _STATE['decode'](item, rng), ''
  except audio_io.BadSampleError as e:
    if _STATE['fail_fast']:
      raise
    return None, str(e)


def prepare(config, out, split='train', num_shards=8, workers=0, show_progress=True) -> dict:
  """Writes the records of `split`; returns the summary ({'num_examples', 'skipped', ...})."""
  if config.data.source == 'records':
    raise ValueError("config.data.source is 'records'; prepare reads 'manifest' or 'embedded'")
  pipeline.check_data_config(config.data, split)
  _init_worker(config, split)
  total = len(_STATE['source'])
  num_shards = max(1, min(num_shards, total))
  messages, start = [], time.time()

  def progress(done, n, written, skipped):
    if show_progress and (done == n or done % 16 == 0):
      rate = done / max(time.time() - start, 1e-9)
      print(f'\r[{done}/{n}] {written} written, {skipped} skipped, {rate:.1f} examples/s',
            end='', file=sys.stderr, flush=True)

  def examples(results):
    for ex, msg in results:
      if msg:
        messages.append(msg)
        logging.warning('prepare: skipped %s', msg)
      yield ex

  if workers > 0:
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(workers, _init_worker, (config, split)) as pool:
      summary = records.write_shards(examples(pool.imap(decode_one, range(total), 4)), out,
                                     split, num_shards, config.model, total,
                                     {'source': config.data.source}, progress)
  else:
    summary = records.write_shards(examples(map(decode_one, range(total))), out, split,
                                   num_shards, config.model, total,
                                   {'source': config.data.source}, progress)
  if show_progress:
    print(file=sys.stderr)
  summary['skipped_messages'] = messages
  return summary


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {argv[1:]}')
  if not _OUT.value:
    sys.exit('error: --out is required')
  summary = prepare(_CONFIG.value, _OUT.value, _SPLIT.value, _SHARDS.value, _WORKERS.value)
  print(f'{summary["num_examples"]} {summary["split"]} examples in {summary["num_shards"]} '
        f'shards under {_OUT.value} ({summary["skipped"]} skipped)')
  for msg in summary['skipped_messages']:
    print(f'  skipped: {msg}')


if __name__ == '__main__':
  app.run(main)

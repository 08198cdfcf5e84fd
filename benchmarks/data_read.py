"""Building and reading a TFDS dataset against the direct sources, on one CPU process.

  python -m benchmarks.data_read --clips 32 --files 32

Embedded: builds `--clips` clips of configs/tiny.py into axturbo_events (time, bytes on disk).
Manifest: writes `--files` 2 s 44.1 kHz stereo WAVs (resampled to the model's 16 kHz when
decoded) and builds them into axturbo_manifest. For both, base examples per second read in a
random order from the direct source (synthesis / file decoding) and from the built dataset
(`tfds_source.TfdsSource`), and batches per second of the whole pipeline (tasks, tokenizer,
batching; data.read_threads reader threads). Results go to stdout; docs/guide/data.md records
them. Not part of the library: nothing imports this file.
"""
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import soundfile
from absl import app
from absl import flags

from axturbo.data import pipeline
from axturbo.data import tfds_builders
from configs import tiny

_CLIPS = flags.DEFINE_integer('clips', 32, 'Embedded clips built into axturbo_events.')
_FILES = flags.DEFINE_integer('files', 32, 'WAV files built into axturbo_manifest.')
_BATCHES = flags.DEFINE_integer('batches', 8, 'Pipeline batches timed per source.')


def per_second(fn, count: int) -> float:
  start = time.perf_counter()
  for i in range(count):
    fn(i)
  return count / (time.perf_counter() - start)


def write_manifest(folder: pathlib.Path, files: int) -> str:
  rng = np.random.default_rng(0)
  lines = []
  for i in range(files):
    path = folder / f'{i}.wav'
    soundfile.write(path, 0.1 * rng.standard_normal((88200, 2)).astype(np.float32), 44100)
    lines.append(json.dumps({'path': str(path), 'caption': 'a dog barks',
                             'type': 'text_condition-audio'}) + '\n')
  (folder / 'm.jsonl').write_text(''.join(lines))
  return str(folder / 'm.jsonl')


def compare(config, name: str, data_dir: str, batches: int) -> None:
  """Build time and size, then direct vs TFDS reads, printed as one block."""
  start = time.perf_counter()
  builder = tfds_builders.build(config, name, data_dir)
  build_s = time.perf_counter() - start
  size = sum(f.stat().st_size for f in pathlib.Path(builder.data_dir).glob('*.array_record*'))
  n = builder.info.splits['train'].num_examples
  print(f'{builder.name}/{name}: {n} examples built in {build_s:.2f} s '
        f'({n / build_s:.1f} examples/s), {size / 1e6:.2f} MB ({size / n / 1e3:.0f} kB each)')
  tfds_config = config.copy_and_resolve_references()
  tfds_config.data.update(source='tfds', tfds_name=f'{builder.name}/{name}',
                          tfds_data_dir=data_dir)
  for label, c in (('direct', config), ('tfds', tfds_config)):
    source, decode = pipeline.base_source(c, 'train')
    order = np.random.default_rng(0).permutation(len(source))
    rng = np.random.default_rng(0)
    read = (lambda i: decode(source[order[i]], rng)) if decode else (
        lambda i: source[order[i]])
    examples = per_second(read, len(source))
    it = pipeline.make_iterator(c, process_index=0, process_count=1)
    next(it)   # reader threads started
    batch_rate = per_second(lambda _: next(it), batches)
    print(f'  {label:6s} {examples:8.1f} base examples/s   {batch_rate:6.2f} batches/s '
          f'(batch {c.data.batch_size}, {c.data.read_threads} reader threads)')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  with tempfile.TemporaryDirectory() as tmp:
    c = tiny.get_config()
    c.data.update(num_clips=_CLIPS.value, heldout_clips=0)
    compare(c, 'bench', tmp, _BATCHES.value)
    folder = pathlib.Path(tmp) / 'wavs'
    folder.mkdir()
    c = tiny.get_config()
    c.data.update(source='manifest', manifest=write_manifest(folder, _FILES.value))
    compare(c, 'bench', tmp, _BATCHES.value)


if __name__ == '__main__':
  app.run(main)

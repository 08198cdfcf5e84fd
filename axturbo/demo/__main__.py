r"""Serve a local demo page for every generation task (needs `pip install ".[demo]"`).

  python -m axturbo.demo --checkpoint out/quickstart/student/export

The page (http://127.0.0.1:7860, this machine only) offers text-to-audio/music,
video-to-audio/music, text+video, image-to-audio, inpainting and continuation, with duration
(long clips window by window), sampler, steps, CFG (teacher) and seed; per result an audio
player, the spectrogram, the muxed mp4 for a video input, the JSON sidecar and the files to
download (written to --out as sample.py writes them). Examples load the quickstart's demo inputs
(--inputs). Requests are queued and run one at a time. The default shapes are compiled at start.
"""
import pathlib
import sys

from absl import app as absl_app
from absl import flags
from absl import logging

_CHECKPOINT = flags.DEFINE_string('checkpoint', 'out/quickstart/student/export',
                                  'Checkpoint directory (default: the quickstart\'s student).')
_INPUTS = flags.DEFINE_string('inputs', 'out/quickstart/inputs', 'Demo inputs for the '
                              'examples (python -m data.make_demo_inputs writes them).')
_OUT = flags.DEFINE_string('out', 'out/demo', 'Folder for the generated files.')
_PORT = flags.DEFINE_integer('port', 7860, 'Port on 127.0.0.1.')
_MAX_QUEUE = flags.DEFINE_integer('max_queue', 64, 'Requests that may wait; more are refused '
                                  'with a message.')
_PRECOMPILE = flags.DEFINE_list('precompile', ['text', 'video', 'audio'],
                                'Shapes compiled at start (text, video, audio; empty: none).')


def main(argv):
  del argv
  from axturbo.demo import app
  from axturbo.demo import page
  from axturbo.generation import jobs
  checkpoint = pathlib.Path(_CHECKPOINT.value)
  if not checkpoint.is_dir():
    sys.exit(f'error: --checkpoint {checkpoint}: no such checkpoint folder (bash quickstart.sh '
             'writes out/quickstart/student/export; or give --checkpoint)')
  if _MAX_QUEUE.value < 1:
    sys.exit('error: --max_queue must be >= 1')
  bad = [name for name in _PRECOMPILE.value if name not in app.PRECOMPILE]
  if bad:
    sys.exit(f'error: --precompile: unknown shape(s) {bad}; choose from {", ".join(app.PRECOMPILE)}')
  try:
    page.gradio()
  except ImportError as e:
    sys.exit(f'error: {e}')
  examples, note = None, ''
  try:
    examples = app.load_examples(_INPUTS.value)
    note = f'Examples: the quickstart\'s demo inputs from `{_INPUTS.value}`, below the form.'
  except (FileNotFoundError, ValueError) as e:
    note = f'No examples: {e}.'
    logging.warning('no examples: %s', e)
  try:
    demo = app.Demo(jobs.load_generator(checkpoint), _OUT.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  demo.precompile(_PRECOMPILE.value, log=lambda line: print(line, flush=True))
  allowed = [str(demo.out.resolve())] + ([str(pathlib.Path(_INPUTS.value).resolve())]
                                         if examples else [])
  blocks = page.build(demo, examples, note)
  try:
    url = page.launch(blocks, port=_PORT.value, max_queue=_MAX_QUEUE.value,
                      allowed_paths=allowed)
  except OSError as e:
    sys.exit(f'error: --port {_PORT.value}: cannot serve there ({e})')
  print(f'demo: serving {checkpoint} at {url} (Ctrl-C stops it)', flush=True)
  blocks.block_thread()


if __name__ == '__main__':
  absl_app.run(main)

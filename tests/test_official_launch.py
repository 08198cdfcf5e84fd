"""The guide's official launch lines (docs/guide/training.md, docs/guide/distilling.md), run as
written: only configs/official.py is swapped for
tests/micro_official_config.py (the same config shrunk in size), the placeholder paths for
temporary ones, and gs://mybucket for a fake bucket (tests/fake_gcs.py). A tiny local tokenizer
stands in for t5-base's files, a random micro checkpoint for the converted release. Without the
tokenizer folder or the weights to start from, train.py stops at once with one line saying
what to pass."""
import json
import re
import shlex
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from axturbo.data import tfds_builders
from axturbo.models import audiox
from axturbo.runtime import checkpoints
from tests import fake_gcs
from tests import media_files
from tests import micro_official_config
from tests import script_runs
from tests import test_tokenizers

pytestmark = pytest.mark.e2e   # subprocesses: the official-size code path at micro sizes

REPO = script_runs.REPO
CONFIG = str(REPO / 'tests' / 'micro_official_config.py')


PAGES = {'train.py': REPO / 'docs' / 'guide' / 'training.md',
         'distill.py': REPO / 'docs' / 'guide' / 'distilling.md'}


def guide_official_lines() -> dict[str, list[str]]:
  """{'train.py': argv, 'distill.py': argv}: the one `python <script> --config
  configs/official.py` line of each script's guide page (continuations joined)."""
  out = {}
  for script, page in PAGES.items():
    lines = []
    for block in re.findall(r'```bash\n(.*?)```', page.read_text(), re.S):
      lines += block.replace('\\\n', ' ').splitlines()
    found = [shlex.split(l) for l in lines
             if l.startswith(f'python {script} --config configs/official.py')]
    assert len(found) == 1, (script, found)
    out[script] = found[0][1:]
  return out


def _substitute(argv, tmp):
  paths = {'configs/official.py': CONFIG, '/ckpt/audiox_turbo': str(tmp / 'audiox_turbo'),
           '/data/tfds': str(tmp / 'tfds')}
  out = []
  for a in argv:
    for k, v in paths.items():
      a = a.replace(k, v)
    out.append(a)
  return out


def _run(argv, tmp):
  return subprocess.run([sys.executable, '-m', 'tests.fake_gcs', str(tmp / 'gcs'),
                         str(REPO / argv[0]), *argv[1:]], cwd=REPO,
                        env=script_runs.env(tmp), capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """What the guide's lines name: the converted checkpoint (random micro weights with its
  tokenizer/ folder, as `python -m axturbo.convert --t5` writes it) and a TFDS dataset."""
  tmp = tmp_path_factory.mktemp('official')
  c = micro_official_config.get_config()
  model = audiox.build_model(c.model)
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(model, c.model, k)))(jax.random.key(0))
  converted = tmp / 'audiox_turbo'
  checkpoints.save_params(converted, params, c.model, {'kind': 'teacher'},
                          populate=lambda f: test_tokenizers._tiny_t5_like_tokenizer(
                              f / 'tokenizer'))
  lines = []
  for i in range(8):
    wav = media_files.write_wav(tmp / f'tone{i}.wav',
                                media_files.tone(1024 / 44100, 44100, 300.0 + 100 * i), 44100)
    lines.append(json.dumps({'path': str(wav), 'caption': 'a dog barks',
                             'type': 'text_condition-audio'}) + '\n')
  (tmp / 'train.jsonl').write_text(''.join(lines))
  c.data.update(source='manifest', manifest=str(tmp / 'train.jsonl'))
  c.model.text.tokenizer_dir = str(converted / 'tokenizer')
  tfds_builders.build(c, 'mydata', str(tmp / 'tfds'))
  return tmp


@pytest.mark.parametrize('drop,needles', [
    ('--config.model.text.tokenizer_dir', ['--config.model.text.tokenizer_dir=DIR',
                                           'huggingface.co/t5-base']),
    ('--config.train.init_from', ['--config.train.init_from=DIR', 'axturbo.convert'])])
def test_a_missing_input_is_one_line_before_any_work(inputs, drop, needles):
  argv = [a for a in _substitute(guide_official_lines()['train.py'], inputs)
          if not a.startswith(drop)]
  r = _run(argv, inputs)
  assert r.returncode == 1, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert all(n in last for n in needles), last
  assert not (inputs / 'gcs' / 'mybucket' / 'teacher').exists()   # stopped before the workdir


def test_the_guide_official_lines_run(inputs):
  lines = guide_official_lines()
  for script in ('train.py', 'distill.py'):
    r = _run(_substitute(lines[script], inputs), inputs)
    assert r.returncode == 0, r.stderr[-3000:]
  with fake_gcs.installed(inputs / 'gcs'):
    from axturbo.generation.generate import Generator
    teacher_meta = checkpoints.load_meta('gs://mybucket/teacher/export')
    gen = Generator.load('gs://mybucket/student/export')
  assert teacher_meta['kind'] == 'teacher' and teacher_meta['step'] == 2
  assert gen.kind == 'student'
  ids = gen.tokenizer(['a dog barks']).input_ids[0]
  assert ids[:4].tolist() == [3, 4, 5, 1]          # the stand-in vocabulary, EOS-terminated

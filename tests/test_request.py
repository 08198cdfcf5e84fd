"""The generation API's values (axturbo/generation/request.py): one-line errors naming the field,
frozen keyword-only values, defaults by checkpoint kind, a batch of requests equal to each
request alone, and the API's shape (import without side effects, small signatures)."""
import ast
import dataclasses
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from axturbo.generation import generate
from axturbo.generation import InputOptions, LongOptions, Request, SamplerOptions
from axturbo.generation import generate_long
from axturbo.models import audiox
from tests import micro_train_config
from tests import script_runs

AUDIO = np.zeros((64, 2), np.float32)


@pytest.mark.parametrize('make,needle', [
    (lambda: Request(text=3), 'Request.text must be a string, got int'),
    (lambda: Request(video='a.mp4', image='a.png'), 'Request.video and Request.image'),
    (lambda: Request(text='x', sync=np.zeros((4, 8))), 'Request.sync: sync features given '
     'without a video'),
    (lambda: Request(audio=AUDIO, inpaint=0.5), 'Request.inpaint must be (start_s, end_s)'),
    (lambda: Request(audio=AUDIO, inpaint=(0.5, 0.2)), 'Request.inpaint span 0.5:0.2 s'),
    (lambda: Request(audio=AUDIO, inpaint=(0.0, float('nan'))), 'Request.inpaint span'),
    (lambda: Request(audio=AUDIO, inpaint=(0, 1), continuation=True),
     'Request.inpaint and Request.continuation'),
    (lambda: Request(text='x', inpaint=(0, 1)), 'Request.audio: inpainting needs an audio'),
    (lambda: Request(text='x', continuation=True), 'Request.audio: continuation needs an audio'),
    (lambda: Request(text='x', continuation='yes'), 'Request.continuation must be True or False'),
    (lambda: Request(text='x', audio=AUDIO, keep_unmasked=True),
     'Request.keep_unmasked applies to inpainting or continuation only'),
    (lambda: Request(segments=[(0, 'a')]), 'Request.segments: captions over time are for a '
     'long clip; give duration_s too'),
    (lambda: Request(text='a', segments=[(0, 'a')], duration_s=1.0),
     'Request.text and Request.segments'),
    (lambda: Request(segments=[(0, 'a'), (2.0, 'b')], duration_s=1.0),
     'Request.segments: segment 1 starts at 2 s, at or past the end of the 1 s clip'),
    (lambda: Request(text='a', duration_s='long'), 'Request.duration_s must be a number'),
    (lambda: Request(text='a', duration_s=float('inf')), 'Request.duration_s must be a finite'),
    (lambda: Request(audio=AUDIO, inpaint=(0, 0.001), duration_s=1.0),
     'Request.inpaint: inpainting edits one window'),
    (lambda: Request(audio=AUDIO, duration_s=1.0), 'Request.audio: with duration_s an audio '
     'input is the beginning of the clip: set continuation=True'),
    (lambda: SamplerOptions(sampler='euler'), "SamplerOptions.sampler must be 'student' or "
     "'teacher', got 'euler'"),
    (lambda: SamplerOptions(steps=0), 'SamplerOptions.steps must be >= 1, got 0'),
    (lambda: SamplerOptions(steps=2.5), 'SamplerOptions.steps must be an integer'),
    (lambda: SamplerOptions(sampler='student', steps=3), 'SamplerOptions.steps: the student '
     'sampler supports steps in (1, 2, 4), got 3'),
    (lambda: SamplerOptions(sampler='student', cfg_scale=6), 'SamplerOptions.cfg_scale: the '
     'student sampler uses no classifier-free guidance'),
    (lambda: SamplerOptions(cfg_scale=-1), 'SamplerOptions.cfg_scale must be >= 0'),
    (lambda: SamplerOptions(seed='0'), 'SamplerOptions.seed must be an integer'),
    (lambda: InputOptions(prompt_pad='centre'), "InputOptions.prompt_pad must be 'left' or "
     "'right', got 'centre'"),
    (lambda: InputOptions(no_sync=1), 'InputOptions.no_sync must be True or False'),
    (lambda: LongOptions(join='glue'), "LongOptions.join must be one of ('latent', "
     "'crossfade'), got 'glue'"),
    (lambda: LongOptions(overlap_s=float('nan')), 'LongOptions.overlap_s must be a finite'),
    (lambda: LongOptions(tail_s=None), 'LongOptions.tail_s must be a number of seconds'),
])
def test_bad_values_give_one_line_errors_naming_the_field(make, needle):
  with pytest.raises(ValueError, match=re.escape(needle)) as e:
    make()
  assert '\n' not in str(e.value)


def test_values_are_frozen_keyword_only_and_normalized():
  r = Request(text='rain', audio=AUDIO, inpaint=[0, '0.5'], keep_unmasked=np.bool_(True))
  assert r.inpaint == (0.0, 0.5) and r.keep_unmasked is True
  with pytest.raises(dataclasses.FrozenInstanceError):
    r.text = 'snow'
  with pytest.raises(TypeError):
    Request('rain')   # keyword-only: no positional fields to mix up
  with pytest.raises(TypeError):
    SamplerOptions('teacher')
  long = Request(segments=[[0, 'a'], ['0.5', 'b']], duration_s=1)
  assert long.segments == ((0.0, 'a'), (0.5, 'b')) and long.duration_s == 1.0
  assert long.captions == long.segments and Request(text='x').captions == ((0.0, 'x'),)
  assert SamplerOptions(steps=np.int64(2), cfg_scale=3).steps == 2
  assert LongOptions(overlap_s=1).overlap_s == 1.0


def test_sampler_defaults_follow_the_checkpoint_kind():
  assert SamplerOptions(seed=5).resolved('student') == SamplerOptions(
      sampler='student', steps=4, cfg_scale=1.0, seed=5)
  assert SamplerOptions().resolved('teacher') == SamplerOptions(
      sampler='teacher', steps=250, cfg_scale=6.0)
  assert SamplerOptions(sampler='teacher', steps=2).resolved('student').cfg_scale == 6.0
  # sampler None: the kind's rules apply when it is resolved, with a one-line error
  with pytest.raises(ValueError, match=re.escape('steps in (1, 2, 4), got 3')):
    SamplerOptions(steps=3).resolved('student')
  assert SamplerOptions(steps=3).resolved('teacher').steps == 3


def test_package_exports_the_api_without_building_the_model_stack(tmp_path):
  code = ('import sys\n'
          'from axturbo.generation import InputOptions, LongOptions, Request, SamplerOptions\n'
          "assert 'axturbo.generation.generate' not in sys.modules, 'imported the Generator'\n"
          "assert 'axturbo.models.audiox' not in sys.modules, 'imported the model'\n"
          'import axturbo.generation as g\n'
          'from axturbo.generation import Generator, generate_long\n'
          "assert Generator.__module__ == 'axturbo.generation.generate'\n"
          "assert generate_long.__module__ == 'axturbo.generation.longform'\n"
          "print('ok')\n")
  r = subprocess.run([sys.executable, '-c', code], cwd=script_runs.REPO,
                     env=script_runs.env(tmp_path, devices=1), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]


def _parameters(fn: ast.FunctionDef) -> list[str]:
  a = fn.args
  names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
  names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
  return names[1:] if names and names[0] in ('self', 'cls') else names


def test_generation_functions_take_at_most_eight_parameters():
  # serving.Pipeline's constructor takes its eight build options as keywords (dtype, weights,
  # decode dtype, attention, unrolling, precision, tokenizer, cache), like a config section.
  allowed = {('serving.py', '__init__')}
  root = pathlib.Path(script_runs.REPO) / 'axturbo' / 'generation'
  over = []
  for path in sorted(root.glob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = len(_parameters(node))
        if n > 8 and (path.name, node.name) not in allowed:
          over.append(f'{path.name}:{node.lineno} {node.name} ({n})')
  assert not over, over


# ------------------------------------------------------------------------ on the micro model

@pytest.fixture(scope='module')
def micro_gen():
  m = micro_train_config.get_config().model
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(
      jax.random.PRNGKey(0))
  return generate.Generator(m, params)


@pytest.mark.slow
def test_a_batch_equals_each_request_alone(micro_gen):
  gen = micro_gen
  rng = np.random.default_rng(0)
  audio = (0.3 * rng.standard_normal((100, 2))).astype(np.float32)
  frames = rng.integers(0, 256, (gen.config.video.num_frames, 16, 16, 3), np.uint8)
  requests = [Request(text='rain', audio=audio, continuation=True, keep_unmasked=True),
              Request(video=frames)]
  both = gen.generate(requests, SamplerOptions(seed=3))
  assert [r.meta['seed'] for r in both] == [3, 4] and both[1].meta['batch_size'] == 2
  # request i of a batch uses seed + i: each alone with its own seed gives the same clip
  for i, request in enumerate(requests):
    [alone] = gen.generate(request, SamplerOptions(seed=3 + i))
    np.testing.assert_allclose(alone.latents, both[i].latents, rtol=1e-4, atol=1e-4)
    assert alone.meta['inputs'] == both[i].meta['inputs']
  # the same batch again is bit-identical
  again = gen.generate(requests, SamplerOptions(seed=3))
  for a, b in zip(both, again):
    np.testing.assert_array_equal(a.waveform, b.waveform)


@pytest.mark.slow
def test_one_window_and_long_clips_are_separate_calls(micro_gen):
  gen = micro_gen
  with pytest.raises(ValueError, match='prompt 1: duration_s asks for a long clip; generate it '
                                       'with longform.generate_long'):
    gen.generate([Request(text='a'), Request(text='b', duration_s=0.05)])
  with pytest.raises(ValueError, match=re.escape("requests must be a Request or a list of "
                                                 "Requests (axturbo.generation.Request), got "
                                                 "str")):
    gen.generate('rain')
  with pytest.raises(ValueError, match=re.escape('requests[1] must be a Request')):
    gen.generate([Request(text='a'), 'b'])
  with pytest.raises(ValueError, match='prompt 0: no duration_s'):
    generate_long(gen, Request(text='a'))
  with pytest.raises(ValueError, match=re.escape('share one duration (their windows run '
                                                 'together), got [0.03, 0.05]')):
    generate_long(gen, [Request(text='a', duration_s=0.05), Request(text='b', duration_s=0.03)])
  with pytest.raises(ValueError, match='sync features given and no_sync asked'):
    gen.generate(Request(video=np.zeros((4, 16, 16, 3), np.uint8),
                         sync=np.zeros((gen.config.video.sync_len, gen.config.video.sync_dim))),
                 inputs=InputOptions(no_sync=True))

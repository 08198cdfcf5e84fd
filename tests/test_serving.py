"""axturbo.serving.Pipeline: in float32 it equals Generator; the prompt cache changes nothing."""
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.data import tokenizers
from axturbo.generation import generate, serving
from axturbo.generation import Request, SamplerOptions
from axturbo.models import audiox

_PATH = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu_suite.py'
_spec = importlib.util.spec_from_file_location('gpu_suite', _PATH)
gpu_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_suite)


@pytest.fixture(scope='module')
def setup():
  m = gpu_suite.micro_model_config()
  model = audiox.build_model(m)
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(model, m, k)))(jax.random.PRNGKey(0))
  params = dict(params)   # a non-zero empty-video embedding, so the empty-video path shows
  params['video'] = dict(params['video'])
  params['video']['empty_visual_feat'] = jax.random.normal(
      jax.random.PRNGKey(1), params['video']['empty_visual_feat'].shape)
  tok = tokenizers.ByteTokenizer(m.text.max_length)
  gen = generate.Generator(m, params, kind='student', tokenizer=tok)
  pipe = serving.Pipeline(m, params, dtype='float32', decode_dtype='float32', tokenizer=tok)
  return m, params, gen, pipe


@pytest.mark.slow
@pytest.mark.parametrize('sampler,steps', [('student', 4), ('teacher', 3)])
def test_float32_pipeline_equals_generator(setup, sampler, steps):
  _, _, gen, pipe = setup
  texts = ['a bell', 'rain on a roof']
  options = SamplerOptions(seed=5, sampler=sampler, steps=steps)
  want = gen.generate([Request(text=t) for t in texts], options)
  got = pipe([Request(text=t) for t in texts], options)
  assert got.shape == (2,) + want[0].waveform.shape
  for i in range(2):
    np.testing.assert_allclose(got[i], want[i].waveform, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_video_tokens_match_generator(setup):
  m, _, gen, pipe = setup
  v, c = m.video, m.clip
  frames = np.random.default_rng(0).integers(0, 256, (1, v.num_frames, c.image_size,
                                                      c.image_size, 3), dtype=np.uint8)
  [want] = gen.generate(Request(text='a bell', video=frames[0]), SamplerOptions(seed=2))
  got = pipe(Request(text='a bell', video=frames[0]), SamplerOptions(seed=2))
  np.testing.assert_allclose(got[0], want.waveform, rtol=1e-5, atol=1e-6)


@pytest.mark.slow   # compiles whole generation pipelines
def test_cache_and_batch_rows(setup):
  _, _, _, pipe = setup
  first = pipe([Request(text='a bell')], SamplerOptions(seed=1))
  assert 'a bell' in pipe._cache
  again = pipe([Request(text='a bell')], SamplerOptions(seed=1))   # cached T5 tokens
  np.testing.assert_array_equal(first, again)
  # prompt i uses seed + i (batch-size rounding only)
  both = pipe([Request(text='x'), Request(text='a bell')], SamplerOptions(seed=0))
  np.testing.assert_allclose(both[1], first[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow   # compiles whole generation pipelines
def test_bf16_weights_are_stored_in_bf16(setup):
  m, params, _, _ = setup
  pipe = serving.Pipeline(m, params, dtype='bfloat16', tokenizer=tokenizers.ByteTokenizer(8))
  dtypes = {k: {x.dtype for x in jax.tree.leaves(v)} for k, v in pipe.params.items()}
  assert dtypes['trunk'] == {jnp.dtype(jnp.bfloat16)} and dtypes['vae'] == {jnp.dtype('float32')}
  wave = pipe(Request(text='a bell'), SamplerOptions(seed=0))
  assert wave.dtype == np.float32 and np.isfinite(wave).all()


@pytest.mark.slow   # compiles whole generation pipelines
def test_inference_layout_is_the_same_network(setup):
  """Generator and Pipeline run the trunk without its scan on the scanned tree split per
  block (issue 38); the training layout (unroll_layers=False) gives the same waveform."""
  m, params, gen, pipe = setup
  assert m.trunk.scan_layers
  assert not gen.model.trunk.scan_layers and not pipe.model.trunk.scan_layers
  per_block = audiox.inference_params(nn.unbox(params))
  assert 'block' in nn.unbox(params)['trunk']['layers']
  assert jax.tree.structure(gen.params) == jax.tree.structure(per_block)
  assert jax.tree.structure(pipe.params) == jax.tree.structure(per_block)
  scanned = serving.Pipeline(m, params, dtype='float32', unroll_layers=False,
                             tokenizer=tokenizers.ByteTokenizer(m.text.max_length))
  assert scanned.model.trunk.scan_layers
  assert jax.tree.structure(scanned.params) == jax.tree.structure(nn.unbox(params))
  bell, seed = Request(text='a bell'), SamplerOptions(seed=4)
  np.testing.assert_allclose(scanned(bell, seed), pipe(bell, seed), rtol=1e-5,
                             atol=1e-6)

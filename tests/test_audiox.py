"""The composed AudioX model at the CPU size (configs/tiny.py): every path, config checks, bf16."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.models import audiox
from axturbo.flow import cfg_velocity
from configs import tiny
from tests.fixture_io import rel_err

# Measured: 4e-3 .. 1e-2 relative error of the bf16 velocity (fp32 params) on this model;
# the bound leaves ~3x headroom and the floor proves bf16 really ran.
BF16_REL_ERR_BOUND = 3e-2


@functools.lru_cache(maxsize=None)
def _model(dtype='float32'):
  m = tiny.model_config()
  return audiox.build_model(m, dtype=dtype), m


@pytest.fixture(scope='module')
def setup(tiny_params):
  model, m = _model()
  params = tiny_params
  rng = np.random.default_rng(0)
  b = 2
  batch = audiox.dummy_batch(m, b)
  batch['input_ids'] = jnp.asarray(rng.integers(3, m.t5.vocab_size, batch['input_ids'].shape),
                                   jnp.int32)
  mask = np.ones(batch['attention_mask'].shape, np.int32)
  mask[1, 5:] = 0
  batch['attention_mask'] = jnp.asarray(mask)
  frames = rng.integers(0, 255, batch['frames'].shape).astype(np.float32)
  frames[1] = 0  # second sample has no video
  batch['frames'] = jnp.asarray(frames)
  batch['sync'] = jnp.asarray(rng.normal(size=batch['sync'].shape), jnp.float32)
  batch['prompt'] = jnp.asarray(0.1 * rng.normal(size=batch['prompt'].shape), jnp.float32)
  batch['audio'] = jnp.asarray(0.1 * rng.normal(size=batch['audio'].shape), jnp.float32)
  return model, m, params, batch


def _condition(model, params, batch):
  text = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                     method='encode_text')
  video = model.apply({'params': params}, batch['frames'], batch['sync'], method='encode_video')
  audio = model.apply({'params': params}, batch['prompt'], deterministic=True,
                      method='encode_audio_prompt')
  return text, video, audio, model.apply({'params': params}, text, video, audio, method='fuse')


def _forward(model, params, batch, x, t):
  """Every path in one compiled function (compiling the tiny model is the slow part)."""
  text, video, audio, cond = _condition(model, params, batch)
  apply = lambda *a: model.apply({'params': params}, *a, method='velocity')
  z = model.apply({'params': params}, batch['audio'], deterministic=True, method='encode_latents')
  return dict(text=text, video=video, audio=audio, cond=cond, v=apply(x, t, cond),
              v_null=apply(x, t, jnp.zeros_like(cond)), v_cfg=cfg_velocity(apply, x, t, cond, 6.0),
              z=z, decoded=model.apply({'params': params}, z, method='decode_latents'))


@pytest.fixture(scope='module')
def outputs(setup):
  model, m, params, batch = setup
  x = jax.random.normal(jax.random.key(1), (2, m.trunk.seq_len, m.trunk.io_channels))
  t = jnp.array([0.3, 0.9])
  out32 = jax.jit(functools.partial(_forward, model))(params, batch, x, t)
  out16 = jax.jit(functools.partial(_forward, _model('bfloat16')[0]))(params, batch, x, t)
  return out32, out16


@pytest.mark.slow
def test_conditioning_paths(setup, outputs):
  _, m, params, _ = setup
  out = outputs[0]
  assert out['text'].shape == (2, m.text.max_length, m.cond_dim)
  np.testing.assert_array_equal(out['text'][1, 5:], 0)  # padded T5 rows are exactly zero
  # An all-zero video becomes the learned empty feature, whatever the sync features say.
  np.testing.assert_array_equal(out['video'][1], params['video']['empty_visual_feat'])
  assert not np.allclose(out['video'][0], out['video'][1])
  assert out['audio'].shape == (2, m.audio_prompt.prompt_tokens, m.cond_dim)
  assert out['cond'].shape == (2, m.trunk.cond_len, m.cond_dim)


def test_velocity_and_cfg(setup, outputs):
  _, m, _, _ = setup
  out = outputs[0]
  assert out['v'].shape == (2, m.trunk.seq_len, m.trunk.io_channels)
  assert np.all(np.isfinite(out['v']))
  # Random-init velocities are large (~1e3); compare relatively.
  assert rel_err(out['v_cfg'], out['v_null'] + 6.0 * (out['v'] - out['v_null'])) < 1e-5


def test_latent_round_trip_shapes(setup, outputs):
  _, m, _, _ = setup
  out = outputs[0]
  assert out['z'].shape == (2, m.trunk.seq_len, m.trunk.io_channels)
  assert out['decoded'].shape[0] == 2 and out['decoded'].shape[-1] == 2


def test_bf16_compute_close_to_float32(outputs):
  err = rel_err(outputs[1]['v'], outputs[0]['v'])
  assert 1e-4 < err < BF16_REL_ERR_BOUND, err


def test_inconsistent_config_names_the_fields():
  m = tiny.model_config()
  m.trunk.cond_len = 7
  m.t5.d_model = 32
  with pytest.raises(ValueError) as e:
    audiox.build_model(m)
  assert 'model.trunk.cond_len=7' in str(e.value) and 'model.t5.d_model=32' in str(e.value)

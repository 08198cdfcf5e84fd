"""The in-training held-out loss (axturbo/runtime/evaluation.py): its fixed times, its per-task
summary, and its loss against the teacher objective's own function (train/step.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from axturbo import flow
from axturbo.data import synthetic
from axturbo.models import audiox
from axturbo.runtime import evaluation
from axturbo.train import step as train_step
from tests import micro_train_config


def test_fixed_times_are_shifted_midpoints():
  t = evaluation.fixed_times(4, 3.0)
  np.testing.assert_allclose(t, flow.shift_times(jnp.array([0.125, 0.375, 0.625, 0.875]), 3.0),
                             rtol=1e-6)
  assert np.all(np.diff(t) > 0) and 0 < t[0] and t[-1] < 1


def test_summary_means_valid_rows_overall_and_per_task():
  losses = np.array([1.0, 2.0, 3.0, 10.0, 5.0])
  task = np.array([0, 0, 3, 3, 1])
  valid = np.array([True, True, True, False, True])
  assert evaluation.summarize(losses, task, valid) == {
      'heldout/loss': 11.0 / 4, 'heldout/loss_text_to_audio': 1.5,
      'heldout/loss_video_to_audio': 5.0, 'heldout/loss_inpaint': 3.0}
  assert evaluation.summarize(losses, None, None) == {'heldout/loss': 21.0 / 5}


@pytest.mark.slow
def test_heldout_loss_is_the_flow_matching_loss_at_its_noise_and_times():
  """The mean of evaluation.per_sample_loss equals train.step.rectified_flow_loss on the same
  latents, noise, times and (dropout-free) conditions; two calls agree exactly."""
  c = micro_train_config.get_config()
  model = audiox.build_model(c.model)
  params = nn.meta.unbox(audiox.init_params(model, c.model, jax.random.key(0)))
  batch = {k: jnp.asarray(v) for k, v in
           next(synthetic.make_iterator(c, split='heldout')).items()}
  times = jnp.asarray(evaluation.fixed_times(batch['audio'].shape[0], c.model.time_shift))
  key = jax.random.key(7)
  losses = jax.jit(functools.partial(evaluation.per_sample_loss, model))(params, batch, key,
                                                                          times)
  apply = functools.partial(model.apply, {'params': params})
  f = apply(batch, deterministic=True, method='encode_conditions')
  cond = apply(f['text'], f['video'], f['audio'], deterministic=True, method='fuse')
  x0 = apply(batch['audio'], deterministic=True, method='encode_latents')
  noise = jax.random.normal(key, x0.shape, jnp.float32)
  expected = train_step.rectified_flow_loss(
      lambda z, t: apply(z, t, cond, method='velocity'), x0, noise, times, batch['valid'])
  assert losses.shape == (batch['audio'].shape[0],)
  np.testing.assert_allclose(float(jnp.mean(losses)), float(expected), rtol=1e-5)
  again = jax.jit(functools.partial(evaluation.per_sample_loss, model))(params, batch, key,
                                                                         times)
  np.testing.assert_array_equal(np.asarray(losses), np.asarray(again))


def test_spectrogram_image_puts_a_tone_in_its_row():
  sr, f = 16000, 1000.0
  tone = np.sin(2 * np.pi * f * np.arange(sr // 4) / sr)
  img = evaluation.spectrogram_image(tone, n_fft=512)
  assert img.dtype == np.uint8 and img.shape[0] == 257
  row = int(np.argmax(img.mean(axis=1)))
  assert abs((256 - row) * sr / 512 - f) <= sr / 512   # low frequencies at the bottom


@pytest.mark.slow
def test_one_step_samplers_are_the_x0_prediction_from_noise():
  """On the grid [1, 0] the Euler step and the student's renoise both give z - v(z, 1)."""
  c = micro_train_config.get_config()
  model = audiox.build_model(c.model)
  params = nn.meta.unbox(audiox.init_params(model, c.model, jax.random.key(0)))
  batch = {k: jnp.asarray(v) for k, v in
           next(synthetic.make_iterator(c, split='heldout')).items()}
  key, grid = jax.random.key(3), jnp.array([1.0, 0.0])
  euler, student = (evaluation.sample_latents(model, params, batch, key, grid, s)
                    for s in (False, True))
  apply = functools.partial(model.apply, {'params': params})
  f = apply(batch, deterministic=True, method='encode_conditions')
  cond = apply(f['text'], f['video'], f['audio'], deterministic=True, method='fuse')
  z = jax.random.normal(key, euler.shape, jnp.float32)
  expected = z - apply(z, jnp.ones(z.shape[0]), cond, method='velocity')
  np.testing.assert_allclose(np.asarray(euler), np.asarray(expected), atol=1e-5)
  np.testing.assert_allclose(np.asarray(student), np.asarray(expected), atol=1e-5)


def _half_second_micro():
  """The micro config with 0.5 s clips at 16 kHz (the embedded clips' shortest)."""
  c = micro_train_config.get_config()
  c.model.audio_samples = c.model.prompt_samples = 8000
  c.model.trunk.seq_len = c.model.audio_prompt.latent_seq_len = 500   # patch codec hop 16
  return c


def test_event_scorer_is_the_cli_benchmark_on_the_weights_it_is_given():
  """The in-training event benchmark (axturbo/eval/during_training.py) swaps weights into one
  Generator: after the swap it generates what a fresh Generator of those weights generates,
  and its metrics are the eval CLI path's (`benchmark.run_events`) on them."""
  from axturbo.eval import benchmark, during_training
  from axturbo.generation import Generator, Request, SamplerOptions
  c = _half_second_micro()
  c.train.eval_event_clips, c.train.eval_event_steps = 2, (2,)
  score = during_training.scorer(c, c.train, 'train')
  init = jax.jit(lambda k: nn.unbox(audiox.init_params(audiox.build_model(c.model), c.model, k)))
  first, second = init(jax.random.PRNGKey(0)), init(jax.random.PRNGKey(1))
  score(first)
  got = score(second)
  fresh = Generator(c.model, second, kind='teacher')
  want = benchmark.run_events(score.clips, benchmark.model_generator(fresh, score.options(2)),
                              c.model.sample_rate, during_training.TASKS)['metrics']
  assert got == {f'events/{k}': v for k, v in want.items() if v is not None}
  assert {'events/cat', 'events/sync_v2a', 'events/inpaint'} <= set(got)
  options = SamplerOptions(sampler='teacher', steps=2, cfg_scale=1.0)
  request = Request(text='a bell')
  swapped = score.generator.generate(request, options)[0].waveform
  np.testing.assert_array_equal(swapped, fresh.generate(request, options)[0].waveform)
  assert not np.array_equal(swapped, Generator(c.model, first, kind='teacher').generate(
      request, options)[0].waveform)


@pytest.mark.parametrize('where,field,value,needle', [
    ('distill', 'eval_event_steps', (3,), 'config.distill.eval_event_steps=(3,): '),
    ('train', 'eval_event_clips', 2, "config.data.source is 'synthetic'"),
])
def test_event_scorer_settings_are_one_line_errors(where, field, value, needle):
  from axturbo.eval import during_training
  c = _half_second_micro()
  section = c[where]
  section.eval_event_clips = 2
  section[field] = value
  if needle.startswith('config.data'):
    c.data.source = 'synthetic'
  with pytest.raises(ValueError, match=needle.replace('(', r'\(').replace(')', r'\)')):
    during_training.scorer(c, section, where)
  c.model.audio_samples = 800   # 0.05 s clips: too short for the embedded dataset
  c.data.source = 'embedded'
  section.eval_event_steps = (4,) if where == 'distill' else (25,)
  with pytest.raises(ValueError, match='held-out clips of this model cannot be made'):
    during_training.scorer(c, section, where)

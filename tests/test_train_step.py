"""Teacher train step: loss formula, EMA/LR schedules, sharding equivalence, non-finite skip,
frozen subtrees, checkpoint restore onto another mesh (in-process, 8 fake CPU devices)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from axturbo.models import audiox
from axturbo import flow
from axturbo.data import synthetic as synthetic_data
from axturbo.runtime import checkpoints as checkpointing, optim, sharding
from axturbo.train import state as state_lib, step as step_lib

from tests import micro_train_config


@functools.lru_cache(maxsize=None)
def _setup():
  config = micro_train_config.get_config()
  model = audiox.build_model(config.model)
  tx = optim.make_optimizer(config.train.optim, config.train.total_steps)
  init_fn = state_lib.make_init_fn(model, config, tx)
  it = synthetic_data.make_iterator(config)
  batches = [next(it) for _ in range(2)]
  return config, model, tx, init_fn, batches


@functools.lru_cache(maxsize=None)
def _stepper(mesh_shape, single_device=False):
  """(mesh, fresh-state fn, jitted step), compiled once per mesh for the whole module."""
  config, model, tx, init_fn, _ = _setup()
  mesh = sharding.make_mesh(mesh_shape, jax.devices()[:1] if single_device else None)
  _, shardings = state_lib.abstract_state(init_fn, mesh)
  # Initialise (and compile the init) once; steps donate their input, so hand out copies.
  host = jax.tree.map(np.asarray, state_lib.init_state(init_fn, mesh, config.seed))
  init = lambda: jax.device_put(host, shardings)
  return mesh, init, step_lib.jit_train_step(model, tx, config, mesh, shardings)


@functools.lru_cache(maxsize=None)
def _two_steps(mesh_shape, single_device=False):
  _, _, _, _, batches = _setup()
  mesh, init, step = _stepper(mesh_shape, single_device)
  state, losses = init(), []
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  # Host copies: the device state is donated by any later step.
  return jax.tree.map(np.asarray, state), losses


def test_rectified_flow_loss_matches_numpy_reference():
  rng = np.random.default_rng(0)
  x0, noise = rng.standard_normal((2, 3, 16, 8)).astype(np.float32)
  t = np.array([0.1, 0.5, 0.9], np.float32)
  w = rng.standard_normal((8, 8)).astype(np.float32)
  velocity = lambda z, tt: jnp.tanh(z @ w) * (1 + tt[:, None, None])  # any fixed network
  z = t[:, None, None] * noise + (1 - t[:, None, None]) * x0        # Eq. 2
  v = np.tanh(z @ w) * (1 + t[:, None, None])
  expected = np.mean((v - (noise - x0)) ** 2)                        # Eq. 3-4
  got = step_lib.rectified_flow_loss(velocity, x0, noise, t)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Padding rows do not count; with every row valid it is the plain MSE.
  valid = np.array([True, True, False])
  per_sample = np.mean((v - (noise - x0)) ** 2, axis=(1, 2))
  np.testing.assert_allclose(step_lib.rectified_flow_loss(velocity, x0, noise, t, valid),
                             per_sample[:2].mean(), rtol=1e-6)
  np.testing.assert_allclose(step_lib.rectified_flow_loss(velocity, x0, noise, t, valid | True),
                             expected, rtol=1e-6)


def test_timestep_samplers_and_cfg_dropout():
  t = np.asarray(flow.sample_times(jax.random.key(0), 16))
  assert sorted(np.floor(t * 16).astype(int)) == list(range(16))  # one draw per stratum
  for s in (1.0, 3.0):  # SD3's shift: ends fixed, order kept, median u = 1/2 -> s / (s + 1)
    shifted = np.asarray(flow.shift_times(jnp.asarray([0.0, 0.5, 1.0]), s))
    np.testing.assert_allclose(shifted, [0.0, s / (s + 1.0), 1.0], rtol=1e-6)
  assert np.all(np.diff(np.asarray(flow.shift_times(jnp.asarray(np.sort(t)), 3.0))) > 0)
  ln = np.asarray(flow.logit_normal_times(jax.random.key(0), 1000))
  assert 0 < ln.min() and ln.max() < 1 and abs(np.median(ln) - 0.5) < 0.05
  cond = jnp.ones((2000, 3, 4))
  dropped = np.asarray(step_lib.cfg_dropout(jax.random.key(1), cond, 0.1))
  zero_rows = np.all(dropped == 0, axis=(1, 2))
  assert np.all(zero_rows | np.all(dropped == 1, axis=(1, 2)))  # whole samples only
  assert 0.07 < zero_rows.mean() < 0.13


def test_ema_decay_and_inverse_lr_follow_the_official_semantics():
  # ema_pytorch(beta=0.9999, power=3/4, update_after_step=1): updates 0, 1 copy; then
  # decay = 1 - n^-3/4 for update n, capped at beta.
  d = [float(optim.ema_decay(n, 0.9999, 0.75, 1)) for n in (0, 1, 2, 3, 10**8)]
  np.testing.assert_allclose(d, [0.0, 0.0, 1 - 2 ** -0.75, 1 - 3 ** -0.75, 0.9999], rtol=1e-6)
  lr = [float(optim.inverse_lr(n, 1e-5, 1e6, 0.5, 0.99)) for n in (0, 99, 10**6)]
  np.testing.assert_allclose(lr, [1e-7, 1e-5 * (1 - 0.99 ** 100) * (1 + 99e-6) ** -0.5,
                                  1e-5 * 2 ** -0.5], rtol=1e-5)


def test_split_params_names_a_prefix_that_matches_nothing():
  tree = {'trunk': {'a': 1}, 'maf': {'b': 2}}
  sel, rest = optim.split_params(tree, ['trunk'])
  assert sel == {'trunk': {'a': 1}} and rest == {'maf': {'b': 2}}
  assert optim.merge_params(sel, rest) == tree
  with pytest.raises(ValueError, match=r"train.trainable: 'trnk' matches no parameter"):
    optim.split_params(tree, ['trnk'])


@pytest.mark.slow
def test_frozen_subtrees_have_no_optimizer_state_and_stay_fixed():
  config, _, _, init_fn, _ = _setup()
  # The micro config trains everything but the audio prompt's own VAE encoder.
  mu = optax.tree_utils.tree_get(jax.eval_shape(init_fn, jax.random.key(0)).opt_state, 'mu')
  assert set(mu) == {'text', 'clip', 'video', 'audio_prompt', 'maf', 'trunk'}
  assert set(mu['audio_prompt']) == {'proj_features_128', 'proj_out'}
  _, init, _ = _stepper((2, 4, 1))
  before = jax.tree.map(np.asarray, init().params)
  after, _ = _two_steps((2, 4, 1))
  jax.tree.map(np.testing.assert_array_equal, before['audio_prompt']['encoder'],
               after.params['audio_prompt']['encoder'])
  for name in ('text', 'maf', 'trunk'):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before[name], after.params[name])
    assert any(jax.tree.leaves(changed)), name


@pytest.mark.slow
def test_sharded_step_matches_single_device():
  single, loss1 = _two_steps((1, 1, 1), single_device=True)
  sharded, loss8 = _two_steps((2, 4, 1))
  mesh, init, _ = _stepper((2, 4, 1))
  assert 'fsdp' in str(init().params['trunk']['project_in']['kernel'].sharding.spec)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  assert int(sharded.updates) == 2 and int(sharded.skipped) == 0
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  jax.tree.map(close, sharded.params, single.params)
  jax.tree.map(close, sharded.ema, single.ema)


@pytest.mark.slow
def test_activation_constraints_compile_and_keep_the_step_exact():
  """With the models' activation sharding hints active (mesh + logical rules in context), the
  sharded step still equals the single-device one."""
  single, loss1 = _two_steps((1, 1, 1), single_device=True)
  _, _, _, _, batches = _setup()
  mesh, init, step = _stepper((2, 4, 1))
  state = init()
  compiled = sharding.compile_step(step, state, sharding.global_batch(batches[0], mesh), mesh,
                                   activation_constraints=True)
  losses = []
  for batch in batches:
    state, metrics = compiled(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  np.testing.assert_allclose(losses, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               jax.tree.map(np.asarray, state.params), single.params)


@pytest.mark.slow
def test_nonfinite_loss_skips_the_update():
  _, _, _, _, batches = _setup()
  bad = dict(batches[0], audio=np.full_like(batches[0]['audio'], np.nan))
  mesh, init, step = _stepper((2, 4, 1))
  state, _ = step(init(), sharding.global_batch(batches[0], mesh))   # one good update
  before = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema))
  state, metrics = step(state, sharding.global_batch(bad, mesh))
  assert not bool(metrics['finite']) and not np.isfinite(float(metrics['loss']))
  assert (int(state.step), int(state.updates), int(state.skipped)) == (2, 1, 1)
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema)))
  state, metrics = step(state, sharding.global_batch(batches[1], mesh))  # training goes on
  assert bool(metrics['finite']) and int(state.updates) == 2


@pytest.mark.slow
def test_checkpoint_restores_onto_another_mesh_with_data_state(tmp_path):
  config, model, tx, init_fn, _ = _setup()
  mesh, init, step = _stepper((2, 4, 1))
  state, _ = step(init(), sharding.global_batch(_setup()[4][0], mesh))
  it = synthetic_data.make_iterator(config)
  for _ in range(3):
    next(it)
  mgr = checkpointing.make_manager(tmp_path, config.train)
  assert checkpointing.save(mgr, state, it)
  mgr.wait_until_finished()
  expected_next = next(it)

  mesh = sharding.make_mesh((1, 1, 8))  # tensor-parallel layout instead of data x fsdp
  abstract, _ = state_lib.abstract_state(init_fn, mesh)
  fresh_it = synthetic_data.make_iterator(config)
  restored = checkpointing.restore_latest(checkpointing.make_manager(tmp_path, config.train),
                                          abstract, fresh_it)
  assert restored.params['trunk']['project_in']['kernel'].sharding.mesh.shape['tensor'] == 8
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               restored, state)
  np.testing.assert_array_equal(next(fresh_it)['audio'], expected_next['audio'])


@pytest.mark.slow   # initialises the whole train state on an 8-device mesh (~30 s on 2 cores)
def test_nonfinite_state_is_never_checkpointed(tmp_path):
  config, *_ = _setup()
  _, init, _ = _stepper((2, 4, 1))
  state = init()
  broken = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
  mgr = checkpointing.make_manager(tmp_path, config.train)
  with pytest.raises(FloatingPointError, match='non-finite'):
    checkpointing.save(mgr, broken, synthetic_data.make_iterator(config))
  assert mgr.latest_step() is None

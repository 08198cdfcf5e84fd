"""Distillation math (axturbo.distill.dmd, .objectives, axturbo.runtime.checkpoints) against the real
MMDiT trunk and discriminator heads at a tiny size (docs/official.md, "Distillation"; test
the Gaussian toy, is tests/test_dmd_toy.py).
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from axturbo import flow
from axturbo.distill import dmd, objectives as obj
from axturbo.generation import sampling
from axturbo.runtime import checkpoints as param_checks
from configs import official
from axturbo.models.disc_head import DiscriminatorHead, DiscriminatorHeads
from axturbo.models.mmdit import MMDiT

B, T, C, L, D = 8, 16, 8, 8, 16   # B = 8: one sample per fake device in the sharded test
TRUNK = dict(io_channels=C, embed_dim=32, depth=2, num_heads=2, head_dim=16, cond_dim=D,
             cond_len=L, seq_len=T, mlp_hidden=64)
K = 2   # read-out blocks / heads (official 6 of 24)
# Compile time dominates this file on CPU: XLA's backend optimisations are switched off (the
# numbers are the same up to rounding) and network calls are nested jits, traced once each.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _cfg(**kw):
  c = official.distill_config()
  c.disc_num_blocks = K
  c.update(kw)
  return c


def _perturb(params, key, scale):
  seed = int(jax.random.randint(key, (), 0, 2 ** 30))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(x + scale * rng.standard_normal(x.shape), x.dtype),
                      params)


def _random_params(module, seed, *args):
  """Parameters of `module` drawn with numpy from the abstract init (no XLA compile): kernels
  N(0, 1/fan_in), scales 1 + N(0, 0.05^2), everything else (biases, the zero-initialised
  pre/post convs, Fourier frequencies) N(0, 0.05^2) or N(0, 1), so every path is exercised."""
  abstract = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *args)))
  rng = np.random.default_rng(seed)

  def draw(path, a):
    names = [str(getattr(k, 'key', k)) for k in path]
    shape = a.shape[1:] if 'layers' in names or 'heads' in names else a.shape
    if names[-1] == 'kernel':
      std = 1.0 / np.sqrt(np.prod(shape[:-1]))
    elif names[-1] == 'time_freqs':
      std = 1.0
    else:
      std = 0.05
    x = rng.normal(0.0, std, a.shape) + (1.0 if names[-1] == 'scale' else 0.0)
    return jnp.asarray(x, a.dtype)
  return jax.tree_util.tree_map_with_path(draw, abstract)['params']


@functools.lru_cache(maxsize=None)
def _setup():
  model = MMDiT(**TRUNK)
  heads = DiscriminatorHeads(K, C, 8)
  x, t, cond = jnp.zeros((B, T, C)), jnp.full((B,), 0.5), jnp.zeros((B, L, D))
  teacher = _random_params(model, 0, x, t, cond)
  head_params = _random_params(heads, 1, jnp.zeros((K, B, T, C)))
  nets = obj.Networks(
      velocity=jax.jit(lambda p, *a: model.apply({'params': p}, *a)),
      readouts=jax.jit(lambda p, z, t, c, n: model.apply({'params': p}, z, t, c, n,
                                                         method='readouts'), static_argnums=4),
      heads=jax.jit(lambda p, f: heads.apply({'params': p}, f)))
  rng = np.random.default_rng(2)
  data = dict(cond=jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32),
              x_real=jnp.asarray(rng.standard_normal((B, T, C)), jnp.float32))
  return model, heads, nets, teacher, head_params, data


@functools.lru_cache(maxsize=None)
def _draws(seed=1):
  cfg = _cfg()
  return _jit(lambda k: obj.draw_step_randomness(k, (B, T, C), cfg))(jax.random.key(seed))


def _student_grads(cfg, student, teacher, fake, heads_p, index=1):
  """Gradients of (L_DM, L_adv) of the student objective w.r.t. every network's params."""
  _, _, nets, _, _, data = _setup()
  d = _draws()

  @_jit
  def grads(*params):
    def parts(*ps):
      _, aux = obj.student_objective(*ps, nets, data['cond'], d, index, cfg)
      return aux['loss_dm'], aux['loss_adv']
    _, pull = jax.vjp(parts, *params)
    one, zero = jnp.ones(()), jnp.zeros(())
    return pull((one, zero)), pull((zero, one))
  return grads(student, teacher, fake, heads_p)


def _all_zero(tree):
  return all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(tree))


def _any_nonzero(tree):
  return any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(tree))


# 1 -------------------------------------------------------------------------------------------
def test_flow_identities():
  k = jax.random.split(jax.random.key(3), 3)
  x0, eps = jax.random.normal(k[0], (B, T, C)), jax.random.normal(k[1], (B, T, C))
  t = jax.random.uniform(k[2], (B,))
  z = flow.interpolate(x0, eps, t)
  np.testing.assert_allclose(flow.x0_from_velocity(z, eps - x0, t), x0, atol=1e-5)
  np.testing.assert_array_equal(flow.renoise(x0, eps, jnp.ones(B)), eps)
  np.testing.assert_array_equal(flow.renoise(x0, eps, jnp.zeros(B)), x0)
  np.testing.assert_array_equal(dmd.noisy_latent_for_discriminator(x0, eps, t), z)


# 2, 3, 7, 11 ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_dmd_gradient_exactly_zero_at_init_with_cfg1():
  _, _, _, teacher, heads_p, _ = _setup()
  (g_dm, _, _, _), _ = _student_grads(_cfg(guidance_scale=1.0, adv_weight=0.0), teacher, teacher,
                                teacher, heads_p, index=0)
  assert _all_zero(g_dm), 'fake == teacher at CFG 1 must give an exactly zero DMD gradient'


def test_student_loss_routing_cfg6_direction_and_gan_generator_term():
  _, _, _, teacher, heads_p, _ = _setup()
  # At init (fake == teacher) CFG 6 still gives the student the guidance direction.
  (g_dm, g_adv) = _student_grads(_cfg(), teacher, teacher, teacher, heads_p)
  for name, (gs, gt, gf, gh) in (('L_DM', g_dm), ('L_adv', g_adv)):
    assert _any_nonzero(gs), f'{name} must reach the student'
    assert _all_zero(gt) and _all_zero(gf) and _all_zero(gh), \
        f'{name} must not reach teacher, fake or heads'


# 4, 5, 6 -------------------------------------------------------------------------------------
def _velocities(seed=7):
  k = jax.random.split(jax.random.key(seed), 5)
  n = lambda i, s=1.0: s * jax.random.normal(k[i], (B, T, C))
  return n(0), n(1) + 0.3 * n(0), n(2), n(3), jax.random.uniform(k[4], (B,), minval=0.1)


def test_dm_loss_gradient_is_g_over_numel_and_descends_towards_teacher():
  v_t, v_f, x0, eps, t = _velocities()
  z = flow.renoise(x0, eps, t)
  for normalizer in dmd.NORMALIZERS:
    g, bad = dmd.dmd_gradient(v_t, v_f, x0, z, t, normalizer)
    assert g.dtype == jnp.float32 and int(bad) == 0
    grad = jax.grad(dmd.distribution_matching_loss)(x0, g)
    np.testing.assert_allclose(grad, g / g.size, rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(grad))))
    toward = flow.x0_from_velocity(z, v_t, t) - flow.x0_from_velocity(z, v_f, t)
    for b in range(B):
      cos = jnp.vdot(-g[b], toward[b]) / (jnp.linalg.norm(g[b]) * jnp.linalg.norm(toward[b]))
      assert cos > 0.999, (normalizer, float(cos))


def test_normalizer_identities():
  v_t, v_f, x0, eps, t = _velocities()
  expect = (v_t - v_f) / jnp.mean(jnp.abs(v_t), axis=(1, 2), keepdims=True)
  for tt in (t, jnp.full((B,), 0.9), jnp.full((B,), 0.3)):
    z = flow.renoise(x0, eps, tt)
    g, _ = dmd.dmd_gradient(v_t, v_f, x0, z, tt, 'audiox')
    np.testing.assert_allclose(g, expect, rtol=2e-4, atol=2e-5)   # t cancels
    g2, _ = dmd.dmd_gradient(v_t, v_f, x0, z, tt, 'dmd2')
    # DMD2: (x0_F - x0_T) / mean|x - x0_T| == (v_T - v_F) / mean|v_T - (eps - x)|, also t-free.
    np.testing.assert_allclose(g2, (v_t - v_f) / jnp.mean(jnp.abs(v_t - (eps - x0)), axis=(1, 2),
                                                          keepdims=True), rtol=2e-4, atol=2e-5)
    assert float(jnp.max(jnp.abs(g2 - g))) > 1e-2, 'the two normalizers must differ'
  with pytest.raises(ValueError, match='normalizer'):
    dmd.dmd_gradient(v_t, v_f, x0, x0, t, 'edm')


def test_dmd_gradient_counts_nonfinite():
  v_t, v_f, x0, eps, t = _velocities()
  v_t = v_t.at[0, 0, 0].set(jnp.inf)
  g, bad = dmd.dmd_gradient(v_t, v_f, x0, flow.renoise(x0, eps, t), t, 'audiox')
  assert int(bad) > 0 and bool(jnp.all(jnp.isfinite(g)))


# 8, 15 ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rollout_gradient_only_through_target_step():
  """The traced-index rollout (a loop of k detached trips + one differentiated call) gives the
  gradient of one step at the hand-made z_k; the static path is compiled by the objective tests
  (index 0 and 1)."""
  _, _, nets, teacher, _, data = _setup()
  d = _draws()
  w = jax.random.normal(jax.random.key(9), (B, T, C))
  ts = flow.student_timesteps(4)
  fn = lambda p: (lambda z, t, c: nets.velocity(p, z, t, c))
  full = lambda t: jnp.full((B,), t)
  # Reference: z_k by hand (no gradient anywhere), then one differentiated step at z_k.
  renoise_step = _jit(lambda p, z, t, t_next, eps: flow.renoise(
      dmd.student_x0(fn(p), z, full(t), data['cond']), eps, full(t_next)))
  one_step = _jit(jax.grad(lambda p, z, t: jnp.sum(w * dmd.student_x0(fn(p), z, full(t),
                                                                         data['cond']))))
  traced = _jit(jax.grad(lambda p, k: jnp.sum(w * dmd.student_rollout(
      fn(p), d['noise'], data['cond'], k, d['renoise']))))
  z = d['noise']
  for k in range(4):
    ref = one_step(teacher, z, ts[k])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b)))), traced(teacher, jnp.int32(k)),
        ref)
    if k < 3:
      z = renoise_step(teacher, z, ts[k], ts[k + 1], d['renoise'][k])
  with pytest.raises(ValueError, match='target_index'):
    dmd.student_rollout(fn(teacher), d['noise'], data['cond'], 4, d['renoise'])
  with pytest.raises(ValueError, match='renoise_noises'):
    dmd.student_rollout(fn(teacher), d['noise'], data['cond'], 1, d['renoise'][:2])


@functools.lru_cache(maxsize=None)
def _inference_sampler():
  """The inference sampler (axturbo.sampling) on the tiny teacher, jitted once."""
  _, _, nets, teacher, _, data = _setup()
  fn = lambda z, t: nets.velocity(teacher, z, t, data['cond'])
  return _jit(lambda noise, renoise: sampling.sample_student(fn, noise, renoise, 4))


def test_rollout_exact_with_oracle_velocity_and_matches_inference_sampler():
  np.testing.assert_allclose(flow.student_timesteps(4), [1.0, 0.75, 0.5, 0.25])
  d = _draws()
  x_star = jax.random.normal(jax.random.key(11), (B, T, C))
  oracle = lambda z, t, c: (z - x_star) / t[:, None, None]
  traced = jax.jit(lambda k: dmd.student_rollout(oracle, d['noise'], None, k, d['renoise']))
  for k in range(4):
    x0 = dmd.student_rollout(oracle, d['noise'], None, k, d['renoise'])
    np.testing.assert_allclose(x0, x_star, atol=1e-5)
    np.testing.assert_allclose(traced(jnp.int32(k)), x_star, atol=1e-5)
  # Training rollout to the last step == the inference sampler (docs/official.md, "Distillation").
  _, _, nets, teacher, _, data = _setup()
  fn = lambda z, t, c: nets.velocity(teacher, z, t, c)
  ours = _jit(lambda: dmd.student_rollout(fn, d['noise'], data['cond'], 3, d['renoise']))()
  theirs = _inference_sampler()(d['noise'], d['renoise'])
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


# 9, 13 hinge ---------------------------------------------------------------------------------
def test_hinge_values_and_saturation():
  real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.0])
  np.testing.assert_allclose(dmd.hinge_discriminator_loss(real, fake), 5 / 6 + 1, rtol=1e-6)
  np.testing.assert_allclose(dmd.adversarial_loss(fake), 1 / 3, rtol=1e-6)
  gr, gf = jax.grad(dmd.hinge_discriminator_loss, argnums=(0, 1))(jnp.array([1.5, 3.0]),
                                                                  jnp.array([-1.5, -4.0]))
  assert _all_zero((gr, gf)), 'saturated hinge logits must give zero gradient'
  np.testing.assert_allclose(dmd.student_loss(2.0, 3.0, 1.0, 0.5), 3.5)


# 10, 21 --------------------------------------------------------------------------------------
def test_one_pass_readouts_equal_truncated_forwards_and_head_mean():
  model, heads, nets, teacher, heads_p, data = _setup()
  d = _draws()
  x0, eps, t_d = data['x_real'], d['eps_d_real'], d['t_d_real']

  @_jit
  def run():
    z = dmd.noisy_latent_for_discriminator(x0, eps, t_d)
    feats = nets.readouts(teacher, z, t_d, data['cond'], K)
    truncated = []
    for k in range(1, K + 1):   # an independently built k-block trunk
      trunc = dict(teacher, layers=jax.tree.map(lambda a: a[:k], teacher['layers']))
      truncated.append(MMDiT(**dict(TRUNK, depth=k)).apply({'params': trunc}, z, t_d,
                                                           data['cond']))
    per_head = heads.apply({'params': heads_p}, feats, average=False)
    logits = dmd.discriminator_logits(lambda *a: nets.readouts(teacher, *a),
                                      lambda f: nets.heads(heads_p, f), x0, eps, t_d,
                                      data['cond'], K)
    return feats, truncated, per_head, logits

  feats, truncated, per_head, logits = run()
  assert feats.shape == (K, B, T, C)
  for k in range(K):
    np.testing.assert_allclose(feats[k], truncated[k], rtol=1e-4, atol=1e-5)
  assert logits.shape == (B, DiscriminatorHead.output_length(T), 1)
  np.testing.assert_allclose(logits, per_head.mean(0), rtol=1e-5, atol=1e-6)


# 12, 13 --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fake_step_moves_only_fake_and_heads():
  _, _, nets, teacher, heads_p, data = _setup()
  cfg, d = _cfg(), _draws()
  student = _perturb(teacher, jax.random.key(12), 0.02)
  opt_s, opt_f = optax.adamw(1e-3), optax.adamw(1e-3)   # one state per network group
  state_s, state_f = opt_s.init(student), opt_f.init((teacher, heads_p))

  @_jit
  def fake_step(student, fake_heads, teacher, state_f):
    def loss(fh, s, t_):
      x0 = obj.student_sample(nets, s, data['cond'], d, 1, cfg)
      return obj.fake_objective(fh, t_, nets, data['cond'], x0, data['x_real'], d, cfg)[0]
    g_fh, g_s, g_t = jax.grad(loss, argnums=(0, 1, 2))(fake_heads, student, teacher)
    upd, state_f = opt_f.update(g_fh, state_f, fake_heads)
    return optax.apply_updates(fake_heads, upd), g_s, g_t

  before = jax.tree.map(np.asarray, (student, teacher, heads_p))
  (fake2, heads2), g_s, g_t = fake_step(student, (teacher, heads_p), teacher, state_f)
  assert _all_zero(g_s) and _all_zero(g_t)
  param_checks.assert_same_tree(before[0], student, 'student')   # never handed to an update
  assert _any_nonzero(jax.tree.map(lambda a, b: a - b, fake2, before[1]))
  assert _any_nonzero(jax.tree.map(lambda a, b: a - b, heads2, before[2]))
  del opt_s, state_s


def test_shared_adamw_moves_idle_network_separate_states_do_not():
  params = dict(student=jnp.ones(4), fake=jnp.ones(4))
  g1 = dict(student=jnp.ones(4), fake=jnp.ones(4))
  g2 = dict(student=jnp.ones(4), fake=jnp.zeros(4))   # a student step: no fake gradient
  shared = optax.adamw(1e-2, weight_decay=1e-3)
  s = shared.init(params)
  p1 = optax.apply_updates(params, (u := shared.update(g1, s, params))[0])
  p2 = optax.apply_updates(p1, shared.update(g2, u[1], p1)[0])
  assert bool(jnp.all(p2['fake'] != p1['fake'])), 'momentum + decay move the idle network'
  # Separate states: the idle network is simply not updated.
  opt = optax.adamw(1e-2, weight_decay=1e-3)
  sf = opt.init(params['fake'])
  f1 = optax.apply_updates(params['fake'], opt.update(g1['fake'], sf, params['fake'])[0])
  assert bool(jnp.all(f1 != params['fake']))


# 14 ------------------------------------------------------------------------------------------
def test_schedules():
  ax = [dmd.is_student_step(n) for n in range(12)]
  assert ax == ([True] * 5 + [False]) * 2
  assert [dmd.updates_at(n, 'audiox') for n in range(6)] == [(True, False)] * 5 + [(False, True)]
  assert [dmd.updates_at(n, 'dmd2') for n in range(6)] == [(True, True)] + [(False, True)] * 4 \
      + [(True, True)]
  traced = _jit(lambda n: jnp.stack(dmd.updates_at(n, 'audiox')))
  assert [tuple(map(bool, traced(n))) for n in range(6)] == [(True, False)] * 5 + [(False, True)]
  assert [dmd.is_student_step(n, 2, 3) for n in range(5)] == [True, True, False, False, False]
  with pytest.raises(ValueError):
    dmd.updates_at(0, 'dmd')
  with pytest.raises(ValueError):
    dmd.is_student_step(0, 0, 1)


def test_inverse_lr_is_the_official_schedule():
  from axturbo.runtime.optim import inverse_lr   # shared with teacher training
  lr = lambda n: float(inverse_lr(n, 1e-5, 1e6, 0.5, 0.99))
  np.testing.assert_allclose(lr(0), 1e-7, rtol=1e-5)
  np.testing.assert_allclose(lr(99), 1e-5 * (1 - 0.99 ** 100) * (1 + 99 / 1e6) ** -0.5, rtol=1e-5)
  np.testing.assert_allclose(lr(10 ** 6) / 1e-5, 2 ** -0.5, rtol=1e-4)


# 16, 17 --------------------------------------------------------------------------------------
def test_cfg_formula_and_teacher_velocity():
  _, _, nets, teacher, _, data = _setup()
  d = _draws()
  z, t, cond = d['noise'], d['t_dmd'], data['cond']
  fn = lambda *a: nets.velocity(teacher, *a)
  traced_scale = _jit(lambda s: (fn(z, t, cond), fn(z, t, jnp.zeros_like(cond)),
                                    dmd.teacher_velocity(fn, z, t, cond, s)))
  for s in (0.0, 1.0, 6.0):
    v_c, v_u, v = traced_scale(jnp.float32(s))
    np.testing.assert_allclose(v, flow.classifier_free_guidance(v_c, v_u, s), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(v, s * v_c + (1 - s) * v_u, rtol=1e-4, atol=1e-5)   # MMAudio
  # A Python scale of exactly 1 runs the conditional pass only (the fake's CFG 1, bit-exact).
  v1, v_f = _jit(lambda: (dmd.teacher_velocity(fn, z, t, cond, 1.0),
                             dmd.fake_velocity(fn, z, t, cond)))()
  np.testing.assert_array_equal(v1, v_c)
  np.testing.assert_array_equal(v_f, v_c)


def test_bf16_networks_give_fp32_gradient_within_5_percent():
  _, _, _, teacher, _, data = _setup()
  fake = _perturb(teacher, jax.random.key(13), 0.05)
  d = _draws()
  z = flow.renoise(data['x_real'], d['eps_dmd'], d['t_dmd'])

  @_jit
  def run(teacher, fake):
    out = []
    for dtype in (jnp.float32, jnp.bfloat16):
      model = MMDiT(**TRUNK, dtype=dtype)
      vel = lambda p: (lambda *a: model.apply({'params': p}, *a))
      v_t = dmd.teacher_velocity(vel(teacher), z, d['t_dmd'], data['cond'], 6.0)
      v_f = dmd.fake_velocity(vel(fake), z, d['t_dmd'], data['cond'])
      out.append(dmd.dmd_gradient(v_t, v_f, data['x_real'], z, d['t_dmd'])[0])
    return out

  g32, g16 = run(teacher, fake)
  assert g16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32))
  assert 0 < rel < 0.05, rel


# 18, index sampler, 22 -----------------------------------------------------------------------
def test_time_shift_moves_the_dmd_and_fake_times_and_the_student_grid():
  cfg = _cfg()
  key = jax.random.key(4)
  plain = _jit(lambda k: obj.draw_step_randomness(k, (B, T, C), cfg))(key)
  shifted = _jit(lambda k: obj.draw_step_randomness(k, (B, T, C), cfg, 3.0))(key)
  for name in ('t_dmd', 't_fake'):  # the same uniform draw, through SD3's shift
    u = np.asarray(plain[name], np.float64)
    np.testing.assert_allclose(shifted[name], 3 * u / (1 + 2 * u), rtol=1e-6)
  for name in ('noise', 'renoise', 'index', 't_d_real', 'eps_dmd'):
    np.testing.assert_array_equal(shifted[name], plain[name])
  # The rollout target at index 1 is the x0 estimate from the grid's second time: 0.9, not 0.75.
  _, _, nets, teacher, _, data = _setup()
  seen = []
  velocity = lambda p, z, t, c: (jax.debug.callback(seen.append, t), nets.velocity(p, z, t, c))[1]
  for shift, want in ((1.0, 0.75), (3.0, 0.9)):
    seen.clear()
    n = dataclasses.replace(nets, velocity=velocity, time_shift=shift)
    jax.block_until_ready(obj.student_sample(n, teacher, data['cond'], plain, 1, cfg))
    np.testing.assert_allclose([float(np.asarray(t)[0]) for t in seen], [1.0, want], rtol=1e-6)


def test_random_draws():
  d = _draws()
  for name in ('t_d_real', 't_d_fake'):
    assert bool(jnp.all((d[name] >= 0) & (d[name] < 0.2)))
  t = dmd.sample_discriminator_times(jax.random.key(0), 4096)
  assert float(t.min()) >= 0 and float(t.max()) < 0.2 and float(t.max()) > 0.19
  s = flow.sample_times(jax.random.key(1), 64)
  np.testing.assert_array_equal(np.sort(np.floor(np.asarray(s) * 64)), np.arange(64))
  assert not np.array_equal(np.asarray(d['eps_dmd']), np.asarray(d['eps_fake']))
  draw = _jit(jax.vmap(lambda k: dmd.sample_target_index(k)))
  counts = np.bincount(np.asarray(draw(jax.random.split(jax.random.key(2), 4000))), minlength=4)
  assert counts.shape == (4,) and np.all(np.abs(counts / 4000 - 0.25) < 0.03), counts
  only2 = jax.vmap(lambda k: dmd.sample_target_index(k, (0, 0, 1, 0)))
  assert set(np.asarray(only2(jax.random.split(jax.random.key(3), 64))).tolist()) == {2}
  with pytest.raises(ValueError, match='sum to 1'):
    dmd.sample_target_index(jax.random.key(0), (0.5, 0.6, 0, 0))


def test_sharded_rollout_index_identical_across_devices():
  assert jax.device_count() == 8
  _, _, nets, teacher, _, data = _setup()
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  batch = NamedSharding(mesh, P('data'))
  cfg = _cfg()
  fn = lambda z, t, c: nets.velocity(teacher, z, t, c)
  draw = _jit(lambda key: obj.draw_step_randomness(key, (B, T, C), cfg))
  # A step key whose draw is the last index, so the result can be checked against the
  # (unsharded) inference sampler.
  key = next(k for k in (jax.random.key(s) for s in range(100)) if int(draw(k)['index']) == 3)

  @_jit
  def step(key, cond):
    d = obj.draw_step_randomness(key, (B, T, C), cfg)
    noise = jax.lax.with_sharding_constraint(d['noise'], batch)
    x0 = dmd.student_rollout(fn, noise, cond, d['index'], d['renoise'])
    return d['index'], x0

  idx, x0 = step(key, jax.device_put(data['cond'], batch))
  assert len(x0.sharding.device_set) == 8 and not x0.sharding.is_fully_replicated
  assert idx.sharding.is_fully_replicated
  assert {int(np.asarray(s.data)) for s in idx.addressable_shards} == {3}
  d = draw(key)
  want = _inference_sampler()(d['noise'], d['renoise'])
  np.testing.assert_allclose(np.asarray(x0), want, rtol=1e-5, atol=1e-5)


# 23 ------------------------------------------------------------------------------------------
def test_checkpoint_load_guard():
  _, _, _, teacher, _, _ = _setup()
  loaded = jax.tree.map(np.asarray, teacher)
  student, fake = jax.tree.map(jnp.array, loaded), jax.tree.map(jnp.array, loaded)
  param_checks.assert_distill_init(teacher, student, fake, loaded)
  bad = jax.tree.map(lambda x: x, fake)
  bad['project_out']['kernel'] = bad['project_out']['kernel'].at[0, 0].add(1.0)
  with pytest.raises(param_checks.TreeMismatchError, match='project_out'):
    param_checks.assert_distill_init(teacher, student, bad)
  missing = {k: v for k, v in loaded.items() if k != 'time_freqs'}
  with pytest.raises(param_checks.TreeMismatchError, match='time_freqs'):
    param_checks.assert_distill_init(teacher, student, fake, missing)
  random = jax.tree.map(lambda x: np.asarray(x) + 0.1, teacher)   # never got loaded
  with pytest.raises(param_checks.TreeMismatchError, match='loaded checkpoint'):
    param_checks.assert_distill_init(random, random, random, loaded)


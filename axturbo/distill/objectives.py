"""The two per-step distillation objectives, composed from `dmd` with the stop-gradients.

A distillation step is one of (docs/official.md, "Distillation"):
  * student step: rollout -> DMD gradient (teacher CFG 6, fake CFG 1) + generator hinge term;
    differentiate `student_objective` w.r.t. its first argument (student params) only;
  * fake + discriminator step: flow matching of the fake on sg(student samples) + hinge D loss;
    differentiate `fake_objective` w.r.t. its first argument ((fake params, head params)).
Every other network enters through `jax.lax.stop_gradient`, so even a caller that takes the
gradient w.r.t. everything gets exact zeros for the networks a step must not move.

Networks are described by `Networks` (how to call them given params); `audiox_networks` builds it
for `AudioX` + `DiscriminatorHeads`, where the conditioning features (text, video, audio prompt:
the frozen conditioner outputs) are fused by each network's own MAF, which trains with it.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc

from axturbo import flow
from axturbo.distill import dmd

Params = Any
sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Networks:
  """How to call the networks. Student, fake and teacher share one architecture.

  fuse(params, features) -> cond tokens (B, L, D): the network's own conditioning fusion
    (AudioX: MAF over text/video/audio features); identity for a bare trunk.
  velocity(params, z (B, T, C), t (B,), cond) -> v (B, T, C).
  readouts(params, z, t, cond, num_blocks) -> (K, B, T, C), one pass (teacher only).
  heads(params, feats (K, B, T, C)) -> mean-over-heads logits (B, T', 1).
  time_shift: the models' `time_shift`; the student steps on `flow.time_grid(N, time_shift)`.
  """
  velocity: Callable[..., jax.Array]
  readouts: Callable[..., jax.Array]
  heads: Callable[..., jax.Array]
  fuse: Callable[[Params, Any], jax.Array] = lambda params, features: features
  time_shift: float = 1.0


def audiox_networks(model, heads_module, time_shift: float = 1.0) -> Networks:
  """`Networks` for an `AudioX` model; features = dict(text=, video=, audio=), the (frozen)
  conditioner outputs that each network's own MAF fuses."""
  def fuse(p, f):
    return model.apply({'params': p}, f['text'], f['video'], f['audio'], method='fuse')
  return Networks(
      velocity=lambda p, z, t, c: model.apply({'params': p}, z, t, c, method='velocity'),
      readouts=lambda p, z, t, c, k: model.apply({'params': p}, z, t, c, k, method='readouts'),
      heads=lambda p, feats: heads_module.apply({'params': p}, feats),
      fuse=fuse, time_shift=time_shift)


# Independent streams; fold_in by a fixed id keeps each stream stable when another one is added.
_STREAMS = ('index', 'noise', 'renoise', 't_dmd', 'eps_dmd', 't_fake', 'eps_fake',
            't_d_real', 'eps_d_real', 't_d_fake', 'eps_d_fake')


def draw_step_randomness(key: jax.Array, x_shape: tuple[int, ...], c: mlc.ConfigDict,
                         time_shift: float = 1.0) -> dict[str, jax.Array]:
  """Every random input of one step, for a latent batch of shape (B, T, C).

  'index' () int32 (one per global batch: identical on every device); 'noise' (B, T, C);
  'renoise' (N-1, B, T, C); times (B,) for 't_dmd', 't_fake' (stratified U over t_dmd_range /
  [0, 1), then `flow.shift_times(., time_shift)`: the teacher's training distribution, where
  its score is learnt, and the one the fake model trains on, as the teacher did) and
  't_d_real', 't_d_fake' (U[0, disc_max_t)); an eps of x_shape for each time.
  """
  k = {name: jax.random.fold_in(key, i) for i, name in enumerate(_STREAMS)}
  b = x_shape[0]
  normal = lambda name, shape=x_shape: jax.random.normal(k[name], shape, jnp.float32)
  lo, hi = c.t_dmd_range
  return dict(
      index=dmd.sample_target_index(k['index'], c.index_probs),
      noise=normal('noise'), renoise=normal('renoise', (c.num_steps - 1,) + tuple(x_shape)),
      t_dmd=flow.shift_times(flow.sample_times(k['t_dmd'], b, lo, hi), time_shift),
      eps_dmd=normal('eps_dmd'),
      t_fake=flow.shift_times(flow.sample_times(k['t_fake'], b), time_shift),
      eps_fake=normal('eps_fake'),
      t_d_real=dmd.sample_discriminator_times(k['t_d_real'], b, c.disc_max_t),
      eps_d_real=normal('eps_d_real'),
      t_d_fake=dmd.sample_discriminator_times(k['t_d_fake'], b, c.disc_max_t),
      eps_d_fake=normal('eps_d_fake'))


def _timesteps(nets, c):
  return flow.student_timesteps(c.num_steps, nets.time_shift)


def student_sample(nets: Networks, student_params: Params, features: Any,
                   draws: dict[str, jax.Array], target_index, c: mlc.ConfigDict) -> jax.Array:
  """The rollout sample x0_s (B, T, C) without gradient (input of the fake + D step)."""
  p = sg(student_params)
  cond = nets.fuse(p, features)
  fn = lambda z, t, cc: nets.velocity(p, z, t, cc)
  return sg(dmd.student_rollout(fn, draws['noise'], cond, target_index, draws['renoise'],
                                _timesteps(nets, c)))


def student_objective(student_params: Params, teacher_params: Params, fake_params: Params,
                      head_params: Params, nets: Networks, features: Any,
                      draws: dict[str, jax.Array], target_index, c: mlc.ConfigDict
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. (15) for one batch: w_dm L_DM (Eq. 10, via the rollout of Eqs. 5-6) + lambda L_adv (14).

  Gradient reaches the student (trunk and its MAF) only; the teacher, fake and heads are
  stop-gradient, the generator term back-propagates through the frozen teacher into x0.
  target_index: Python int (static) or traced int32 (e.g. draws['index']).
  Returns (loss, aux) with aux: loss_dm, loss_adv, g_abs_mean, nonfinite, x0 (sg),
  v_teacher_rms, v_fake_rms (root-mean-square of the two velocities).
  """
  tp, fp, hp = sg(teacher_params), sg(fake_params), sg(head_params)
  features = jax.tree.map(sg, features)   # frozen conditioner outputs (official: no_grad)
  cond_s = nets.fuse(student_params, features)
  cond_t, cond_f = sg(nets.fuse(tp, features)), sg(nets.fuse(fp, features))
  student_fn = lambda z, t, cc: nets.velocity(student_params, z, t, cc)
  x0 = dmd.student_rollout(student_fn, draws['noise'], cond_s, target_index, draws['renoise'],
                           _timesteps(nets, c))
  t = draws['t_dmd']
  z = flow.renoise(sg(x0), draws['eps_dmd'], t)   # Eq. (6); only feeds the detached target
  v_t = dmd.teacher_velocity(lambda *a: nets.velocity(tp, *a), z, t, cond_t, c.guidance_scale)
  v_f = dmd.fake_velocity(lambda *a: nets.velocity(fp, *a), z, t, cond_f)
  g, nonfinite = dmd.dmd_gradient(v_t, v_f, x0, z, t, c.normalizer)
  loss_dm = dmd.distribution_matching_loss(x0, g)
  if c.adv_weight:
    logits = dmd.discriminator_logits(lambda *a: nets.readouts(tp, *a),
                                      lambda f: nets.heads(hp, f), x0, draws['eps_d_fake'],
                                      draws['t_d_fake'], cond_t, c.disc_num_blocks)
    loss_adv = dmd.adversarial_loss(logits)
  else:
    loss_adv = jnp.zeros((), jnp.float32)
  loss = dmd.student_loss(loss_dm, loss_adv, c.dm_weight, c.adv_weight)
  rms = lambda v: jnp.sqrt(jnp.mean(jnp.square(v)))
  aux = dict(loss_dm=loss_dm, loss_adv=loss_adv, g_abs_mean=jnp.mean(jnp.abs(g)),
             nonfinite=nonfinite, x0=sg(x0), v_teacher_rms=rms(v_t), v_fake_rms=rms(v_f))
  return loss, aux


def fake_objective(fake_and_head_params: tuple[Params, Params], teacher_params: Params,
                   nets: Networks, features: Any, x0_student: jax.Array, x_real: jax.Array,
                   draws: dict[str, jax.Array], c: mlc.ConfigDict
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """w_fake L_fake (Eqs. 11-12) + w_D L_D (Eq. 13) for one batch.

  Gradient reaches the fake (trunk and its MAF) and the heads only: samples, real latents and
  the teacher are stop-gradient. Real and fake get independent t_d and noise.
  Returns (loss, aux) with aux: loss_fake, loss_d, logits_real, logits_fake (means).
  """
  fp, hp = fake_and_head_params
  tp = sg(teacher_params)
  x0 = sg(x0_student)
  features = jax.tree.map(sg, features)
  cond_f = nets.fuse(fp, features)
  cond_t = sg(nets.fuse(tp, features))
  loss_fake = dmd.fake_flow_matching_loss(lambda *a: nets.velocity(fp, *a), x0,
                                          draws['eps_fake'], draws['t_fake'], cond_f)
  readouts = lambda *a: nets.readouts(tp, *a)
  heads = lambda f: nets.heads(hp, f)
  logits_real = dmd.discriminator_logits(readouts, heads, sg(x_real), draws['eps_d_real'],
                                         draws['t_d_real'], cond_t, c.disc_num_blocks)
  logits_fake = dmd.discriminator_logits(readouts, heads, x0, draws['eps_d_fake'],
                                         draws['t_d_fake'], cond_t, c.disc_num_blocks)
  loss_d = dmd.hinge_discriminator_loss(logits_real, logits_fake)
  loss = c.fake_weight * loss_fake + c.disc_weight * loss_d
  aux = dict(loss_fake=loss_fake, loss_d=loss_d, logits_real=jnp.mean(logits_real),
             logits_fake=jnp.mean(logits_fake))
  return loss, aux

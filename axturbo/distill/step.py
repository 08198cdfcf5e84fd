"""The two pure distillation steps (student; fake + discriminator) and their jitted forms.

A schedule position runs `step_inputs` once (the frozen teacher's conditioners on the batch, and
the real latents: no gradient, shared by both networks and by both steps of a DMD2 step), then
the student and/or fake step on (state, teacher, inputs). `teacher` is the full frozen AudioX
tree; the batch is train.py's (keys in `axturbo.models.audiox.AudioX.__call__`). Step n draws every random input
from fold_in(state.rng, n), so on a DMD2 step that updates both groups they see the same noise,
index and times (the fake step, run second, rolls out the just-updated student), and a resumed run
repeats the same draws. The rollout target index is one replicated draw (identical on every
device) setting the trip count of the detached rollout loop: one compiled program per step kind.

Under `distill.lora` each step differentiates the adapters of its network only (the student's;
the fake's and the heads), merging them into the frozen kernels first (`state.student_network`,
`state.fake_network`); the other network enters with its adapters merged, without dropout.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from axturbo.distill import objectives as obj
from axturbo.distill import state as state_lib
from axturbo.distill.state import DistillState, build_heads
from axturbo.models import audiox
from axturbo.runtime import optim, reporting, sharding

sg = jax.lax.stop_gradient


def make_optimizers(d: mlc.ConfigDict) -> tuple[optax.GradientTransformation, ...]:
  """(student tx, fake + heads tx), from `distill.student` and `distill.fake`."""
  return (optim.make_optimizer(d.student, d.total_steps),
          optim.make_optimizer(d.fake, d.total_steps))


def _keys(state: DistillState) -> dict[str, jax.Array]:
  base = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(('prompt', 'latents',
                                                                      'draws', 'lora'))}


def step_inputs(state: DistillState, teacher: Any, batch: dict, *, model: audiox.AudioX
                ) -> dict[str, jax.Array]:
  """{'features': conditioner outputs, 'x_real': real VAE latents (B, T, C)}, stop-gradient."""
  keys = _keys(state)
  apply = functools.partial(model.apply, {'params': teacher})
  # The audio prompt's posterior is sampled, as officially.
  features = apply(batch, rng=keys['prompt'], method='encode_conditions')
  x_real = apply(batch['audio'], rng=keys['latents'], method='encode_latents')
  return sg(dict(features=features, x_real=x_real))


def student_step(state: DistillState, teacher: Any, inputs: dict, *, model: audiox.AudioX,
                 tx: optax.GradientTransformation, config: mlc.ConfigDict
                 ) -> tuple[DistillState, dict]:
  """One student update (Eq. 15); fake, heads and teacher are inputs only. A non-finite loss or
  gradient norm leaves the student, its optimizer state and the EMA untouched."""
  d = config.distill
  nets = obj.audiox_networks(model, build_heads(config.model), config.model.time_shift)
  draws = obj.draw_step_randomness(_keys(state)['draws'], inputs['x_real'].shape, d,
                                   nets.time_shift)
  trained, frozen = state_lib.split_student(state.student, d)
  fake = state_lib.fake_network(state.fake, teacher, d)
  dropout_key = _keys(state)['lora']

  def objective(trained):
    student = state_lib.student_network(optim.merge_params(trained, frozen) if frozen
                                        else trained, d, dropout_key)
    return obj.student_objective(student, teacher, fake, state.heads, nets, inputs['features'],
                                 draws, draws['index'], d)

  (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(trained)

  def next_ema(trained):
    decay = optim.ema_decay(state.student_updates, d.ema.beta, d.ema.power,
                            d.ema.update_after_step)
    return optim.ema_update(state.ema, trained, decay)

  trained, opt, ema, finite, grad_norm = optim.apply_if_finite(
      tx, loss, grads, state.student_opt, trained, next_ema if d.ema.enabled else None,
      state.ema)
  new = state.replace(
      student_updates=state.student_updates + finite.astype(jnp.int32),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      student=optim.merge_params(trained, frozen) if frozen else trained, student_opt=opt,
      ema=ema)
  metrics = dict(loss_student=loss, loss_dm=aux['loss_dm'], loss_adv=aux['loss_adv'],
                 g_abs_mean=aux['g_abs_mean'],
                 nonfinite_fraction=aux['nonfinite'] / aux['x0'].size,
                 v_teacher_rms=aux['v_teacher_rms'], v_fake_rms=aux['v_fake_rms'],
                 x0_std=jnp.std(aux['x0']), student_grad_norm=grad_norm,
                 student_lr=optim.make_schedule(d.student, d.total_steps)(
                     state.student_updates),
                 student_finite=finite, target_index=draws['index'])
  return new, metrics


def fake_step(state: DistillState, teacher: Any, inputs: dict, *, model: audiox.AudioX,
              tx: optax.GradientTransformation, config: mlc.ConfigDict
              ) -> tuple[DistillState, dict]:
  """One fake-model + discriminator update (Eqs. 11-13) on a stop-gradient student rollout and
  the batch's real latents; the student and EMA are inputs only."""
  d = config.distill
  nets = obj.audiox_networks(model, build_heads(config.model), config.model.time_shift)
  features, x_real = inputs['features'], inputs['x_real']
  draws = obj.draw_step_randomness(_keys(state)['draws'], x_real.shape, d, nets.time_shift)
  x0 = obj.student_sample(nets, state_lib.student_network(state.student, d), features, draws,
                          draws['index'], d)
  dropout_key = jax.random.fold_in(_keys(state)['lora'], 1)   # not the student's masks

  def objective(fake_and_heads):
    fake, heads = fake_and_heads
    return obj.fake_objective((state_lib.fake_network(fake, teacher, d, dropout_key), heads),
                              teacher, nets, features, x0, x_real, draws, d)

  (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)((state.fake, state.heads))
  (fake, heads), opt, _, finite, grad_norm = optim.apply_if_finite(
      tx, loss, grads, state.fake_opt, (state.fake, state.heads))
  new = state.replace(
      fake_updates=state.fake_updates + finite.astype(jnp.int32),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      fake=fake, heads=heads, fake_opt=opt)
  metrics = dict(loss_fake=aux['loss_fake'], loss_d=aux['loss_d'],
                 logits_real=aux['logits_real'], logits_fake=aux['logits_fake'],
                 latent_std=jnp.std(x_real), fake_grad_norm=grad_norm,
                 fake_lr=optim.make_schedule(d.fake, d.total_steps)(state.fake_updates),
                 fake_finite=finite)
  return new, metrics


def advance(state: DistillState) -> DistillState:
  """Moves the schedule position on by one batch (after the step's update(s))."""
  return state.replace(step=state.step + 1)


def jit_steps(model: audiox.AudioX, txs, config: mlc.ConfigDict, mesh: Mesh,
              state_shardings: DistillState, teacher_shardings: Any) -> dict:
  """{'inputs': jit (state, teacher, batch) -> inputs; 'student', 'fake': jit (state, teacher,
  inputs, advance: static bool) -> (state, metrics)}, explicit shardings, the state donated by
  the steps (the teacher never is)."""
  rows = sharding.batch_sharding(mesh)
  out = {'inputs': jax.jit(functools.partial(step_inputs, model=model),
                           in_shardings=(state_shardings, teacher_shardings, rows),
                           out_shardings=rows)}
  for name, fn, tx in (('student', student_step, txs[0]), ('fake', fake_step, txs[1])):
    def step(state, teacher, inputs, advance_step, fn=fn, tx=tx):
      state, metrics = fn(state, teacher, inputs, model=model, tx=tx, config=config)
      return (advance(state) if advance_step else state), metrics
    out[name] = jax.jit(step, static_argnums=(3,),
                        in_shardings=(state_shardings, teacher_shardings, rows),
                        out_shardings=(state_shardings, NamedSharding(mesh, P())),
                        donate_argnums=(0,))
  return out


def compile_steps(jitted: dict, plan: set[tuple[str, bool]], state, teacher, batch, mesh,
                  rules, activation_constraints: bool = False) -> dict:
  """Ahead-of-time compiles `step_inputs` ('inputs') and the (kind, advance) step variants in
  `plan` for abstract or concrete arguments: {'inputs': compiled, (kind, advance): compiled}."""
  with sharding.mesh_context(mesh, rules, activation_constraints):
    lowered = jitted['inputs'].lower(state, teacher, batch)
    out = {'inputs': lowered.compile()}
    rows = sharding.batch_sharding(mesh)
    inputs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows),
                          jax.eval_shape(jitted['inputs'], state, teacher, batch))
    out.update({(k, a): jitted[k].lower(state, teacher, inputs, a).compile() for k, a in plan})
  return out


_LINE = (('loss_dm', 'dm %.4f'), ('loss_adv', 'adv %.3f'), ('loss_fake', 'fake %.4f'),
         ('loss_d', 'D %.3f'), ('logits_real', 'D(real) %.2f'), ('logits_fake', 'D(fake) %.2f'),
         ('g_abs_mean', '|g| %.3f'), ('v_teacher_rms', 'vT %.3f'), ('v_fake_rms', 'vF %.3f'),
         ('x0_std', 'x0 std %.3f'))


class Reporter(reporting.Reporter):
  """The distillation log line and TensorBoard scalars. Student and fake steps report
  different metrics; each logged value is the mean over the steps since the last line that
  reported it. The loss curve plots the fake model's flow-matching loss (the one curve that
  should fall as the fake tracks the student)."""

  def summarize(self, rows: list[tuple[int, dict]]) -> tuple[dict, str, int]:
    for s, m in rows:
      if 'loss_fake' in m:
        self.history.append((s, float(m['loss_fake'])))
    keys = sorted({k for _, m in rows for k in m})
    means = {k: float(np.mean([float(m[k]) for _, m in rows if k in m])) for k in keys}
    skipped = sum(int(not m[k]) for _, m in rows for k in ('student_finite', 'fake_finite')
                  if k in m)
    scalars = {f'distill/{k}': v for k, v in means.items()
               if k not in ('student_finite', 'fake_finite', 'target_index')}
    scalars['distill/skipped_nonfinite'] = skipped
    return scalars, ' | '.join(fmt % means[k] for k, fmt in _LINE if k in means), skipped

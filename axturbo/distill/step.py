"""The two pure distillation steps (student; fake + discriminator) and their jitted forms.

A schedule position runs `step_inputs` once (the frozen teacher's conditioners on the batch, and
the real latents: no gradient, shared by both networks and by both steps of a DMD2 step), then
the student and/or fake step on (state, teacher, inputs). `teacher` is the full frozen AudioX
tree; the batch is train.py's (axturbo.train.step docstring). Step n draws every random input
from fold_in(state.rng, n), so on a DMD2 step that updates both groups they see the same noise,
index and times (the fake step, run second, rolls out the just-updated student), and a resumed run
repeats the same draws. The rollout target index is one replicated draw (identical on every
device) setting the trip count of the detached rollout loop: one compiled program per step kind.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from axturbo import dmd_objectives as obj
from axturbo.distill.state import DistillState, build_heads
from axturbo.models import audiox
from axturbo.train import optim, parallel

sg = jax.lax.stop_gradient
_OPTIMIZER_FIELDS = ('b1', 'b2', 'eps', 'weight_decay', 'inverse', 'warmup_steps',
                     'final_lr_fraction', 'total_steps')


def optimizer_config(d: mlc.ConfigDict, group: str) -> mlc.ConfigDict:
  """The `train.optim` view of one group: shared AdamW/schedule fields + the group's lr/clip."""
  t = mlc.ConfigDict({k: d[k] for k in _OPTIMIZER_FIELDS})
  t.schedule = d.schedule_lr      # `distill.schedule` is the student/fake update schedule
  t.lr, t.grad_clip_norm = d[group].lr, d[group].grad_clip_norm
  return t


def make_optimizers(d: mlc.ConfigDict) -> tuple[optax.GradientTransformation, ...]:
  """(student tx, fake + heads tx): AdamW + schedule (+ clipping) of `axturbo.train.optim`."""
  return (optim.make_optimizer(optimizer_config(d, 'student')),
          optim.make_optimizer(optimizer_config(d, 'fake')))


def conditioner_features(model: audiox.AudioX, teacher: Any, batch: dict, key: jax.Array
                         ) -> dict[str, jax.Array]:
  """The frozen conditioners' outputs, before any MAF: text (B, Lt, D), video (B, Lv, D), audio
  prompt (B, La, D) (posterior sampled, as officially). Stop-gradient."""
  apply = functools.partial(model.apply, {'params': teacher})
  text = apply(batch['input_ids'], batch['attention_mask'], method='encode_text')
  video = apply(batch['frames'].astype(jnp.float32), batch['sync'], method='encode_video')
  audio = apply(batch['prompt'], rng=key, deterministic=False, method='encode_audio_prompt')
  return sg(dict(text=text, video=video, audio=audio))


def _keys(state: DistillState) -> dict[str, jax.Array]:
  base = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(('prompt', 'latents',
                                                                      'draws'))}


def step_inputs(state: DistillState, teacher: Any, batch: dict, *, model: audiox.AudioX
                ) -> dict[str, jax.Array]:
  """{'features': conditioner outputs, 'x_real': real VAE latents (B, T, C)}, stop-gradient."""
  keys = _keys(state)
  x_real = model.apply({'params': teacher}, batch['audio'], rng=keys['latents'],
                       method='encode_latents')
  return sg(dict(features=conditioner_features(model, teacher, batch, keys['prompt']),
                 x_real=x_real))


def _keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def student_step(state: DistillState, teacher: Any, inputs: dict, *, model: audiox.AudioX,
                 tx: optax.GradientTransformation, config: mlc.ConfigDict
                 ) -> tuple[DistillState, dict]:
  """One student update (Eq. 15); fake, heads and teacher are inputs only. A non-finite loss or
  gradient norm leaves the student, its optimizer state and the EMA untouched."""
  d = config.distill
  nets = obj.audiox_networks(model, build_heads(config.model))
  draws = obj.draw_step_randomness(_keys(state)['draws'], inputs['x_real'].shape, d)
  (loss, aux), grads = jax.value_and_grad(obj.student_objective, has_aux=True)(
      state.student, teacher, state.fake, state.heads, nets, inputs['features'], draws,
      draws['index'], d)
  grad_norm = optax.global_norm(grads)
  updates, opt = tx.update(grads, state.student_opt, state.student)
  student = optax.apply_updates(state.student, updates)
  ema = state.ema
  if d.ema.enabled:
    decay = optim.ema_decay(state.student_updates, d.ema.beta, d.ema.power,
                            d.ema.update_after_step)
    ema = optim.ema_update(state.ema, student, decay)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new = state.replace(
      student_updates=state.student_updates + finite.astype(jnp.int32),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      student=_keep_if(finite, student, state.student),
      student_opt=_keep_if(finite, opt, state.student_opt),
      ema=_keep_if(finite, ema, state.ema))
  metrics = dict(loss_student=loss, loss_dm=aux['loss_dm'], loss_adv=aux['loss_adv'],
                 g_abs_mean=aux['g_abs_mean'],
                 nonfinite_fraction=aux['nonfinite'] / aux['x0'].size,
                 v_teacher_rms=aux['v_teacher_rms'], v_fake_rms=aux['v_fake_rms'],
                 x0_std=jnp.std(aux['x0']), student_grad_norm=grad_norm,
                 student_lr=optim.make_schedule(optimizer_config(d, 'student'))(
                     state.student_updates),
                 student_finite=finite, target_index=draws['index'])
  return new, metrics


def fake_step(state: DistillState, teacher: Any, inputs: dict, *, model: audiox.AudioX,
              tx: optax.GradientTransformation, config: mlc.ConfigDict
              ) -> tuple[DistillState, dict]:
  """One fake-model + discriminator update (Eqs. 11-13) on a stop-gradient student rollout and
  the batch's real latents; the student and EMA are inputs only."""
  d = config.distill
  nets = obj.audiox_networks(model, build_heads(config.model))
  features, x_real = inputs['features'], inputs['x_real']
  draws = obj.draw_step_randomness(_keys(state)['draws'], x_real.shape, d)
  x0 = obj.student_sample(nets, state.student, features, draws, draws['index'], d)
  (loss, aux), grads = jax.value_and_grad(obj.fake_objective, has_aux=True)(
      (state.fake, state.heads), teacher, nets, features, x0, x_real, draws, d)
  grad_norm = optax.global_norm(grads)
  updates, opt = tx.update(grads, state.fake_opt, (state.fake, state.heads))
  fake, heads = optax.apply_updates((state.fake, state.heads), updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new = state.replace(
      fake_updates=state.fake_updates + finite.astype(jnp.int32),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      fake=_keep_if(finite, fake, state.fake), heads=_keep_if(finite, heads, state.heads),
      fake_opt=_keep_if(finite, opt, state.fake_opt))
  metrics = dict(loss_fake=aux['loss_fake'], loss_d=aux['loss_d'],
                 logits_real=aux['logits_real'], logits_fake=aux['logits_fake'],
                 latent_std=jnp.std(x_real), fake_grad_norm=grad_norm,
                 fake_lr=optim.make_schedule(optimizer_config(d, 'fake'))(state.fake_updates),
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
  rows = parallel.batch_sharding(mesh)
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
  with parallel.mesh_context(mesh, rules, activation_constraints):
    lowered = jitted['inputs'].lower(state, teacher, batch)
    out = {'inputs': lowered.compile()}
    rows = parallel.batch_sharding(mesh)
    inputs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows),
                          jax.eval_shape(jitted['inputs'], state, teacher, batch))
    out.update({(k, a): jitted[k].lower(state, teacher, inputs, a).compile() for k, a in plan})
  return out

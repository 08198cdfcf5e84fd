"""The pure teacher train step (frozen towers -> MAF -> CFG dropout -> rectified-flow loss) and
its jitted form on a mesh.

Batch (global, per step): 'audio' (B, N, 2) f32 target waveform, 'input_ids' /
'attention_mask' (B, Lt) i32, 'frames' (B, F, H, W, 3) u8, 'sync' (B, S, Ds) f32,
'prompt' (B, Np, 2) f32, 'valid' (B,) bool (padding rows of a short batch are False).
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from axturbo import flow
from axturbo.models import audiox
from axturbo.runtime import lora, optim, reporting, sharding
from axturbo.train import state as state_lib
from axturbo.train.state import TrainState


def cfg_dropout(key: jax.Array, cond: jax.Array, p: float) -> jax.Array:
  """Zeroes each sample's whole post-MAF condition (B, L, D) with probability p (official null)."""
  if p <= 0.0:
    return cond
  keep = jax.random.bernoulli(key, 1.0 - p, (cond.shape[0],))
  return jnp.where(keep[:, None, None], cond, jnp.zeros_like(cond))


def rectified_flow_loss(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array],
                        x0: jax.Array, noise: jax.Array, t: jax.Array,
                        valid: jax.Array | None = None) -> jax.Array:
  """Eq. (2)-(4): mean over valid samples of mean_{T,C} (v(z_t, t) - (noise - x0))^2.

  x0, noise (B, T, C); t (B,); valid (B,) bool. With every row valid this is the official
  plain MSE over all elements.
  """
  z_t = flow.interpolate(x0, noise, t)
  v = velocity_fn(z_t, t)
  if valid is None:
    return flow.flow_matching_loss(v, x0, noise)
  per_sample = jnp.mean(jnp.square(v.astype(jnp.float32) - flow.velocity_target(x0, noise)),
                        axis=tuple(range(1, x0.ndim)))
  w = valid.astype(jnp.float32)
  return jnp.sum(w * per_sample) / jnp.maximum(jnp.sum(w), 1.0)


def condition(model: audiox.AudioX, params: Any, batch: dict, key: jax.Array,
              train: bool) -> jax.Array:
  """Conditioning tokens (B, L, D): text / video / audio-prompt towers, then the MAF.

  The audio prompt's VAE posterior is sampled (and span-masked if `official_masking`), as
  officially; the MAF runs with dropout when `train`.
  """
  k_prompt, k_drop = jax.random.split(key)
  apply = functools.partial(model.apply, {'params': params})
  features = apply(batch, rng=k_prompt, method='encode_conditions')
  return apply(features['text'], features['video'], features['audio'], deterministic=not train,
               rngs={'dropout': k_drop}, method='fuse')


def loss_fn(trainable: Any, frozen: Any, batch: dict, key: jax.Array, *,
            model: audiox.AudioX, t: mlc.ConfigDict, time_shift: float
            ) -> tuple[jax.Array, dict]:
  """The teacher objective for one batch; differentiable in `trainable` only.

  Work that depends only on `frozen` (e.g. a frozen T5 or the VAE) is not differentiated.
  Under LoRA `trainable` is the adapters, merged here into the frozen kernels.
  """
  params = optim.merge_params(trainable, frozen)
  if state_lib.lora_enabled(t):
    base, adapters = lora.split(params)
    params = lora.apply(base, adapters, lora.scale(t.lora), dropout=float(t.lora.dropout),
                        key=jax.random.fold_in(key, 7))
  k_cond, k_lat, k_t, k_eps, k_cfg = jax.random.split(key, 5)
  cond = cfg_dropout(k_cfg, condition(model, params, batch, k_cond, train=True),
                     t.cfg_dropout_prob)
  # Targets: a posterior sample of the VAE latents (official), never a gradient path.
  x0 = jax.lax.stop_gradient(model.apply({'params': params}, batch['audio'], rng=k_lat,
                                         method='encode_latents'))
  times = flow.shift_times(flow.TIMESTEP_SAMPLERS[t.timestep_sampler](k_t, x0.shape[0]),
                           time_shift)
  noise = jax.random.normal(k_eps, x0.shape, jnp.float32)

  def velocity(z_t, tt):
    return model.apply({'params': params}, z_t, tt, cond, method='velocity')

  loss = rectified_flow_loss(velocity, x0, noise, times, batch.get('valid'))
  return loss, {'latent_std': jnp.std(x0)}


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: audiox.AudioX,
               tx: optax.GradientTransformation, config: mlc.ConfigDict
               ) -> tuple[TrainState, dict]:
  """One optimizer update; a non-finite loss or gradient norm leaves params/opt/EMA untouched."""
  t = config.train
  trainable, frozen = optim.split_params(state.params, state_lib.trainable_prefixes(t))
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      trainable, frozen, batch, rng, model=model, t=t, time_shift=config.model.time_shift)

  def next_ema(new_trainable):
    covered, _ = optim.split_params(optim.merge_params(new_trainable, frozen),
                                    state_lib.ema_prefixes(t), 'train.ema.subtrees')
    decay = optim.ema_decay(state.updates, t.ema.beta, t.ema.power, t.ema.update_after_step)
    return optim.ema_update(state.ema, covered, decay)

  trainable, opt_state, ema, finite, grad_norm = optim.apply_if_finite(
      tx, loss, grads, state.opt_state, trainable, next_ema if t.ema.enabled else None,
      state.ema)
  new_state = state.replace(
      step=state.step + 1,
      updates=state.updates + finite.astype(jnp.int32),
      skipped=state.skipped + (~finite).astype(jnp.int32),
      params=optim.merge_params(trainable, frozen), opt_state=opt_state, ema=ema)
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'finite': finite,
             'lr': optim.make_schedule(t.optim, t.total_steps)(state.updates), **aux}
  return new_state, metrics


def step_rng(state: TrainState) -> jax.Array:
  """Per-step key fold_in(base, step): a resumed run draws the same noise at the same step."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def jit_train_step(model: audiox.AudioX, tx: optax.GradientTransformation,
                   config: mlc.ConfigDict, mesh: Mesh, state_shardings: TrainState):
  """jit(state, batch) -> (state, metrics): explicit shardings, the state donated.

  The step's randomness is fold_in(state.rng, state.step). Lower it with
  `sharding.compile_step`.
  """
  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    return train_step(state, batch, step_rng(state), model=model, tx=tx, config=config)

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))


class Reporter(reporting.Reporter):
  """The teacher's log line and TensorBoard scalars, from `train_step`'s metrics."""

  def summarize(self, rows: list[tuple[int, dict]]) -> tuple[dict, str, int]:
    """Host metrics of the steps since the last line -> (TensorBoard scalars, the line's
    metric part, non-finite steps skipped); appends to `history` (the loss curve)."""
    for s, m in rows:
      self.history.append((s, float(m['loss'])))
    last = rows[-1][1]
    mean_loss = float(np.mean([float(m['loss']) for _, m in rows]))
    skipped = sum(int(not m['finite']) for _, m in rows)
    scalars = {'train/loss': mean_loss, 'train/grad_norm': float(last['grad_norm']),
               'train/lr': float(last['lr']), 'train/latent_std': float(last['latent_std']),
               'train/skipped_nonfinite': skipped}
    line = (f'loss {mean_loss:.5f} | grad_norm {scalars["train/grad_norm"]:.3g} | '
            f'lr {scalars["train/lr"]:.3g}')
    return scalars, line, skipped

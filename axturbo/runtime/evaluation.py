"""In-training evaluation shared by train.py and distill.py: every `eval_every` steps
(`config.train.eval_every`, `config.distill.eval_every`; 0 = never), the held-out
flow-matching loss of the averaged (EMA) weights, overall and per task.

The loss is measured on one fixed held-out batch (the first of the held-out split), at fixed
noise and fixed times (one per row, stratified over [0, 1] and shifted by `model.time_shift` as
training draws them), so that successive values differ only by the weights. Conditions and
targets are taken deterministically (no dropout, the VAE posterior mean), unlike training.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from axturbo import flow
from axturbo.data import tasks
from axturbo.runtime import sharding


def fixed_times(batch: int, shift: float) -> np.ndarray:
  """(batch,) times (i + 0.5) / batch, shifted as training shifts its draws."""
  return np.asarray(flow.shift_times(jnp.asarray((np.arange(batch) + 0.5) / batch,
                                                 jnp.float32), shift))


def per_sample_loss(model, params: Any, batch: dict, noise_key: jax.Array,
                    times: jax.Array) -> jax.Array:
  """(B,) mean squared velocity error of `params` on `batch` at `times`, with the noise of
  `noise_key`; conditions without dropout, target latents the posterior mean."""
  apply = functools.partial(model.apply, {'params': params})
  features = apply(batch, deterministic=True, method='encode_conditions')
  cond = apply(features['text'], features['video'], features['audio'], deterministic=True,
               method='fuse')
  x0 = apply(batch['audio'], deterministic=True, method='encode_latents')
  noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
  v = apply(flow.interpolate(x0, noise, times), times, cond, method='velocity')
  err = jnp.square(v.astype(jnp.float32) - flow.velocity_target(x0, noise))
  return jnp.mean(err, axis=tuple(range(1, x0.ndim)))


def summarize(losses: np.ndarray, task: np.ndarray | None, valid: np.ndarray | None
              ) -> dict[str, float]:
  """{'heldout/loss': mean over valid rows, 'heldout/loss_<task>': per task present}."""
  keep = np.ones(losses.shape, bool) if valid is None else np.asarray(valid, bool)
  out = {'heldout/loss': float(np.mean(losses[keep]))}
  if task is not None:
    for i in sorted(set(np.asarray(task)[keep].tolist())):
      name = tasks.TASKS[i] if 0 <= i < len(tasks.TASKS) else f'task{i}'
      out[f'heldout/loss_{name}'] = float(np.mean(losses[keep & (task == i)]))
  return out


class HeldoutLoss:
  """`evaluate(state)` -> {TensorBoard tag: value}: the held-out loss of `params_fn(state)`.

  model: the AudioX module; params_fn: state -> the full parameter tree to score (EMA merged);
  data_iter: the held-out split's iterator (its first batch is kept); seed: the noise.
  """

  def __init__(self, model, config, params_fn: Callable[[Any], Any], data_iter, mesh, rules,
               seed: int):
    from jax.sharding import NamedSharding, PartitionSpec as P
    local = next(data_iter)
    self.batch = sharding.global_batch(local, mesh)
    n = self.batch['audio'].shape[0]
    self.times = jnp.asarray(fixed_times(n, config.model.time_shift))
    self.key = jax.random.key(seed)
    self.params_fn = params_fn
    self.context = lambda: sharding.mesh_context(mesh, rules, config.mesh.activation_constraints)

    def rows(params, batch, key, times):
      return {'loss': per_sample_loss(model, params, batch, key, times),
              'task': batch.get('task'), 'valid': batch.get('valid')}
    # Replicated out: every host reads the whole batch's rows.
    self._rows = jax.jit(rows, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, state: Any) -> dict[str, float]:
    with self.context():
      out = self._rows(self.params_fn(state), self.batch, self.key, self.times)
    out = {k: None if v is None else np.asarray(jax.device_get(v)) for k, v in out.items()}
    return summarize(out['loss'], out['task'], out['valid'])


def make(config, section, where: str, model, params_fn: Callable[[Any], Any], mesh, rules
         ) -> Callable[[Any], dict] | None:
  """The evaluator of `section` (`config.train` or `config.distill`, named `where`), reading
  the held-out split of its `data_source`; None when `section.eval_every` is 0."""
  if not section.eval_every:
    return None
  from axturbo.runtime import launch
  heldout = launch.make_data_iterator(config, section.data_source, f'{where}.data_source',
                                      jax.process_index(), jax.process_count(), split='heldout')
  return HeldoutLoss(model, config, params_fn, heldout, mesh, rules, seed=config.seed)

"""In-training evaluation shared by train.py and distill.py: every `eval_every` steps
(`config.train.eval_every`, `config.distill.eval_every`; 0 = never), the held-out
flow-matching loss of the averaged (EMA) weights, overall and per task, and the audio those
weights make of the held-out batch's first clip of each task (`eval_sample_steps` steps: Euler
for the teacher, the student's own sampler for distill.py; no CFG), for TensorBoard's audio tab
and its spectrogram as an image.

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


def sample_latents(model, params: Any, batch: dict, key: jax.Array, grid: jax.Array,
                   student: bool) -> jax.Array:
  """Latents of `batch`'s conditions (no CFG), from noise of `key` over the times `grid`
  ([1, ..., 0]): Euler steps (a teacher), or the student's x0 prediction renoised with fresh
  noise at each next time (flow.renoise; at 0 it is the prediction itself)."""
  apply = functools.partial(model.apply, {'params': params})
  f = apply(batch, deterministic=True, method='encode_conditions')
  cond = apply(f['text'], f['video'], f['audio'], deterministic=True, method='fuse')
  shape = (batch['audio'].shape[0],) + tuple(jax.eval_shape(
      lambda a: apply(a, deterministic=True, method='encode_latents'), batch['audio']).shape[1:])
  z0 = jax.random.normal(key, shape, jnp.float32)

  def body(i, z):
    t = jnp.full((shape[0],), grid[i])
    t_next = jnp.full((shape[0],), grid[i + 1])
    v = apply(z, t, cond, method='velocity')
    if not student:
      return flow.euler_step(z, v, t, t_next)
    fresh = jax.random.normal(jax.random.fold_in(key, i + 1), shape, jnp.float32)
    return flow.renoise(flow.x0_from_velocity(z, v, t), fresh, t_next)
  return jax.lax.fori_loop(0, grid.shape[0] - 1, body, z0)


def spectrogram_image(audio: np.ndarray, n_fft: int = 512) -> np.ndarray:
  """(H, W) uint8 log-magnitude spectrogram of a mono clip, low frequencies at the bottom,
  80 dB below the clip's peak as black."""
  hop = n_fft // 4
  pad = np.pad(np.asarray(audio, np.float32), (0, max(n_fft - len(audio), 0)))
  frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop] * np.hanning(n_fft)
  db = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)).T + 1e-8)
  db = np.clip(db - db.max() + 80, 0, 80) / 80
  return (255 * db[::-1]).astype(np.uint8)


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


class Evaluator:
  """`evaluate(state)` -> ({scalar tag: value}, {audio tag: clip}): the held-out loss of
  `params_fn(state)` and its samples of the fixed prompts.

  model: the AudioX module; params_fn: state -> the full parameter tree to score (EMA merged);
  data_iter: the held-out split's iterator (its first batch is kept); seed: the noise;
  score: params -> more scalars (the event benchmark, `axturbo.eval.during_training`), or None.
  """

  def __init__(self, model, config, params_fn: Callable[[Any], Any], data_iter, mesh, rules,
               seed: int, sample_steps: int = 0, student: bool = False,
               score: Callable[[Any], dict[str, float]] | None = None):
    self.score = score
    from jax.sharding import NamedSharding, PartitionSpec as P
    local = next(data_iter)
    self.sample_rate = config.model.sample_rate
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
    self.sample_steps, self.student, self.model = sample_steps, student, model
    self.grid = jnp.asarray(flow.time_grid(max(sample_steps, 1), config.model.time_shift))
    self.replicated = NamedSharding(mesh, P())
    self.prompts, self._audio = None, None

  def _make_sampler(self, task: np.ndarray | None, valid: np.ndarray | None) -> None:
    """The fixed prompts: the first valid row of each task in the (global, so every host picks
    the same rows) held-out batch, and the jitted sampler of their audio."""
    n = self.batch['audio'].shape[0]
    task = np.zeros(n, np.int32) if task is None else task
    valid = np.ones(n, bool) if valid is None else valid
    firsts = {}
    for i, (k, ok) in enumerate(zip(task.tolist(), valid.tolist())):
      if ok:
        firsts.setdefault(k, i)
    self.prompts = [(tasks.TASKS[k] if 0 <= k < len(tasks.TASKS) else f'task{k}', i)
                    for k, i in sorted(firsts.items())]
    if not (self.sample_steps and self.prompts):
      return
    index = jnp.asarray([i for _, i in self.prompts])
    model, grid, student = self.model, self.grid, self.student

    def audio(params, batch, key):
      rows = jax.tree.map(lambda x: x[index], batch)
      z = sample_latents(model, params, rows, key, grid, student)
      return model.apply({'params': params}, z, method='decode_latents')
    self._audio = jax.jit(audio, out_shardings=self.replicated)

  def __call__(self, state: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """({scalar tag: value}, {audio tag: mono clip in [-1, 1]})."""
    params = self.params_fn(state)
    with self.context():
      out = self._rows(params, self.batch, self.key, self.times)
      out = {k: None if v is None else np.asarray(jax.device_get(v)) for k, v in out.items()}
      if self.prompts is None:
        self._make_sampler(out['task'], out['valid'])
      audio = None if self._audio is None else self._audio(params, self.batch, self.key)
    clips = {}
    if audio is not None:
      audio = np.asarray(jax.device_get(audio), np.float32)
      for (name, _), clip in zip(self.prompts, audio):
        clips[f'samples/{name}'] = np.clip(clip.mean(axis=-1), -1.0, 1.0)
    scalars = summarize(out['loss'], out['task'], out['valid'])
    if self.score is not None:
      scalars.update(self.score(params))
    return scalars, clips


def make(config, section, where: str, model, params_fn: Callable[[Any], Any], mesh, rules,
         score: Callable[[Any], dict[str, float]] | None = None) -> Callable[[Any], dict] | None:
  """The evaluator of `section` (`config.train` or `config.distill`, named `where`), reading
  the held-out split of its `data_source`, with `score`'s scalars added; None when
  `section.eval_every` is 0."""
  if not section.eval_every:
    return None
  from axturbo.runtime import launch
  heldout = launch.make_data_iterator(config, section.data_source, f'{where}.data_source',
                                      jax.process_index(), jax.process_count(), split='heldout')
  return Evaluator(model, config, params_fn, heldout, mesh, rules, seed=config.seed,
                   sample_steps=section.eval_sample_steps, student=where == 'distill',
                   score=score)

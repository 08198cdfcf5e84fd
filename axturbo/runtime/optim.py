"""Optimizer, learning-rate schedules, the skip-if-not-finite update, EMA, and the
parameter-subtree selection they share; the same for the teacher and every distilled network.

An optimizer is described by one sub-config shape (`configs/official.py: optimizer_config`):
`train.optim`, `distill.student` and `distill.fake`.
Subtrees are named by '/'-joined path prefixes of the AudioX parameter tree, e.g. 'trunk',
'maf' or 'audio_prompt/proj_out' (config `train.trainable`, `train.ema.subtrees`).
"""
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import traverse_util


# ---------------------------------------------------------------------------------------------
# Parameter subtrees.

def _matches(path: str, prefixes: Sequence[str]) -> bool:
  return any(path == p or path.startswith(p + '/') for p in prefixes)


def split_params(tree: Any, prefixes: Sequence[str], what: str = 'train.trainable'
                 ) -> tuple[dict, dict]:
  """(selected, rest): the leaves under any of `prefixes`, and all other leaves.

  Raises ValueError naming `what` and the prefix when a prefix selects nothing (a typo would
  otherwise silently freeze or drop a network).
  """
  flat = traverse_util.flatten_dict(tree, sep='/')
  for p in prefixes:
    if not any(_matches(k, [p]) for k in flat):
      tops = sorted({k.split('/')[0] for k in flat})
      raise ValueError(f'{what}: {p!r} matches no parameter (top-level subtrees: {tops})')
  selected = {k: v for k, v in flat.items() if _matches(k, prefixes)}
  rest = {k: v for k, v in flat.items() if not _matches(k, prefixes)}
  return (traverse_util.unflatten_dict(selected, sep='/'),
          traverse_util.unflatten_dict(rest, sep='/'))


def merge_params(*trees: dict) -> dict:
  """Union of disjoint nested dicts (the inverse of `split_params`)."""
  flat = {}
  for tree in trees:
    flat.update(traverse_util.flatten_dict(tree, sep='/'))
  return traverse_util.unflatten_dict(flat, sep='/')


# ---------------------------------------------------------------------------------------------
# Learning rate.

def inverse_lr(step: jax.Array, base_lr: float, inv_gamma: float, power: float,
               warmup: float) -> jax.Array:
  """Official InverseLR: lr * (1 - warmup^(n+1)) * (1 + n / inv_gamma)^-power, n = 0, 1, ..."""
  n = jnp.asarray(step, jnp.float32)
  return base_lr * (1.0 - warmup ** (n + 1.0)) * (1.0 + n / inv_gamma) ** (-power)


def make_schedule(o: mlc.ConfigDict, total_steps: int) -> optax.Schedule:
  """`o.schedule`: 'inverse' (official), 'constant' or 'cosine' (both with linear warmup);
  'cosine' decays over `total_steps` updates."""
  if o.schedule == 'inverse':
    return lambda n: inverse_lr(n, o.lr, o.inverse.inv_gamma, o.inverse.power, o.inverse.warmup)
  warm = max(int(o.warmup_steps), 0)
  if o.schedule == 'constant':
    main = optax.constant_schedule(o.lr)
  elif o.schedule == 'cosine':
    main = optax.cosine_decay_schedule(o.lr, max(int(total_steps) - warm, 1),
                                       alpha=o.final_lr_fraction)
  else:
    raise ValueError(f"optimizer schedule={o.schedule!r}; expected 'inverse', 'constant' or "
                     "'cosine'")
  if not warm:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warm), main], [warm])


def make_optimizer(o: mlc.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """AdamW (+ optional global-norm clipping) for the trainable subtree only.

  Frozen subtrees are never passed to it, so they carry no optimizer state at all.
  """
  adamw = optax.adamw(make_schedule(o, total_steps), b1=o.b1, b2=o.b2, eps=o.eps,
                      weight_decay=o.weight_decay)
  if o.grad_clip_norm and o.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw)
  return adamw


def apply_if_finite(tx: optax.GradientTransformation, loss: jax.Array, grads: Any,
                    opt_state: Any, params: Any, next_ema: Callable[[Any], Any] | None = None,
                    ema: Any = None) -> tuple[Any, Any, Any, jax.Array, jax.Array]:
  """One optimizer update, dropped whole when the loss or the gradient norm is not finite.

  One bad batch (an overflow, a corrupt clip) must not poison the weights, the optimizer
  moments or the EMA, which a later checkpoint would then keep; the caller counts the skip.
  next_ema(new_params) -> the EMA after this update (None: `ema` passes through).
  Returns (params, opt_state, ema, finite, grad_norm).
  """
  grad_norm = optax.global_norm(grads)
  updates, new_opt = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  new_ema = ema if next_ema is None else next_ema(new_params)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), (new_params, new_opt, new_ema),
                      (params, opt_state, ema))
  return (*kept, finite, grad_norm)


# ---------------------------------------------------------------------------------------------
# EMA (ema_pytorch semantics, as the official teacher wrapper configures it).

def ema_decay(n: jax.Array, beta: float, power: float, update_after_step: int) -> jax.Array:
  """Decay used by the n-th EMA update (n = 0, 1, ... counts applied optimizer updates).

  ema_pytorch copies the online weights while n <= update_after_step, then uses
  min(beta, 1 - (1 + e)^-power) with e = n - update_after_step (inv_gamma = 1, min_value = 0).
  With the official update_after_step = 1: updates 0 and 1 copy, update 2 uses 1 - 2^-0.75.
  """
  e = jnp.asarray(n, jnp.float32) - update_after_step
  decay = jnp.minimum(beta, 1.0 - (1.0 + jnp.maximum(e, 0.0)) ** (-power))
  return jnp.where(e <= 0, 0.0, decay)


def ema_update(ema: Any, params: Any, decay: jax.Array) -> Any:
  """ema <- decay * ema + (1 - decay) * params (float32)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)

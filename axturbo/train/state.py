"""The teacher's training state and its (sharded) initialization."""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import struct
from jax.sharding import Mesh

from axturbo import flow
from axturbo.models import audiox
from axturbo.runtime import optim, settings, sharding


def check_train_config(config: mlc.ConfigDict) -> None:
  """Raises ValueError naming the `--config.train.*` field out of range (before compiling)."""
  t = config.train
  settings.check_loop(t, 'train')
  settings.check_optimizer(t.optim, 'train.optim')
  settings.check_ema(t.ema, 'train.ema')
  settings.number(t, 'cfg_dropout_prob', 'train', low=0, high=1)
  settings.choice(t, 'timestep_sampler', 'train', tuple(flow.TIMESTEP_SAMPLERS))
  if not t.trainable:
    raise ValueError('--config.train.trainable=(): must name at least one parameter subtree')


@struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator (checkpointed as one tree).

  step:      batches consumed so far (int32 scalar); step n draws its randomness from
             fold_in(rng, n), so a resumed run repeats the same noise.
  updates:   optimizer updates applied (steps with a non-finite loss/gradient excluded);
             drives the EMA decay (the LR schedule counts the same updates inside opt_state).
  skipped:   steps skipped because the loss or gradient norm was not finite.
  params:    the full AudioX tree {'text', 'clip', ..., 'trunk', 'vae'}, float32 master weights.
  opt_state: optimizer state of the `train.trainable` subtree only.
  ema:       EMA of the `train.ema.subtrees` subtree (official: the trunk, not the MAF).
  rng:       base PRNG key data, uint32 (2,).
  """
  step: jax.Array
  updates: jax.Array
  skipped: jax.Array
  params: Any
  opt_state: Any
  ema: Any
  rng: jax.Array


def make_init_fn(model: audiox.AudioX, config: mlc.ConfigDict,
                 tx) -> Callable[[jax.Array], TrainState]:
  """init(rng) -> TrainState with boxed (logically named) params, EMA and optimizer moments."""
  t = config.train
  if 'vae' in [p.split('/')[0] for p in t.trainable]:
    raise ValueError("train.trainable: 'vae' cannot be trained by the flow loss (its latents are "
                     "the regression target); train the autoencoder separately")

  def init(rng: jax.Array) -> TrainState:
    init_key, state_key = jax.random.split(rng)
    params = audiox.init_params(model, config.model, init_key)
    trainable, _ = optim.split_params(params, t.trainable, 'train.trainable')
    ema, _ = optim.split_params(params, t.ema.subtrees, 'train.ema.subtrees')
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, updates=zero, skipped=zero, params=params,
                      opt_state=tx.init(trainable), ema=ema if t.ema.enabled else {},
                      rng=jax.random.key_data(state_key))

  return init


def abstract_state(init_fn, mesh: Mesh, rules=sharding.DEFAULT_RULES, seed: int = 0
                   ) -> tuple[TrainState, TrainState]:
  """(abstract unboxed state with .sharding on every leaf, the shardings tree); no arrays made."""
  return sharding.abstract_with_shardings(jax.eval_shape(init_fn, jax.random.key(seed)), mesh,
                                         rules)


def init_state(init_fn, mesh: Mesh, seed: int, rules=sharding.DEFAULT_RULES) -> TrainState:
  """The initial state, created directly in its shards (no full copy on any host)."""
  return sharding.sharded_init(init_fn, mesh, jax.random.key(seed), rules=rules)


def with_params(state: TrainState, params: Any, t: mlc.ConfigDict) -> TrainState:
  """`state` starting from `params` (train.init_from), its EMA a copy of their EMA subtrees.

  A copy, not the same arrays: the train step donates the whole state, and XLA refuses to
  donate one buffer twice (params and ema would alias).
  """
  ema = {}
  if t.ema.enabled:
    ema, _ = optim.split_params(params, t.ema.subtrees, 'train.ema.subtrees')
    ema = jax.tree.map(lambda x: x.copy(), ema)
  return state.replace(params=params, ema=ema)


def inference_params(state: TrainState, t: mlc.ConfigDict, use_ema: bool = True) -> Any:
  """The full AudioX tree with the EMA subtree (if any) in place of the online weights."""
  if not (use_ema and t.ema.enabled):
    return state.params
  _, rest = optim.split_params(state.params, t.ema.subtrees, 'train.ema.subtrees')
  return optim.merge_params(rest, state.ema)

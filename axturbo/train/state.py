"""The teacher's training state and its (sharded) initialization."""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import struct
from jax.sharding import Mesh

from axturbo import flow
from axturbo.models import audiox
from axturbo.runtime import lora, optim, settings, sharding


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
  if lora_enabled(t):
    lora.check_config(t.lora)
    if not t.init_from:
      raise ValueError('--config.train.lora.enabled=True needs --config.train.init_from (the '
                       'checkpoint the adapters adapt)')


def lora_enabled(t: mlc.ConfigDict) -> bool:
  return bool(t.get('lora') and t.lora.enabled)


def trainable_prefixes(t: mlc.ConfigDict) -> tuple[str, ...]:
  """What the optimizer updates: `train.trainable`, or only the adapters under LoRA."""
  return (lora.ADAPTERS,) if lora_enabled(t) else tuple(t.trainable)


def ema_prefixes(t: mlc.ConfigDict) -> tuple[str, ...]:
  """What the EMA averages: `train.ema.subtrees`, or the adapters under LoRA (the frozen base
  needs no average, and a copy of it would double the trunk's memory)."""
  return (lora.ADAPTERS,) if lora_enabled(t) else tuple(t.ema.subtrees)


@struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator (checkpointed as one tree).

  step:      batches consumed so far (int32 scalar); step n draws its randomness from
             fold_in(rng, n), so a resumed run repeats the same noise.
  updates:   optimizer updates applied (steps with a non-finite loss/gradient excluded);
             drives the EMA decay (the LR schedule counts the same updates inside opt_state).
  skipped:   steps skipped because the loss or gradient norm was not finite.
  params:    the full AudioX tree {'text', 'clip', ..., 'trunk', 'vae'}, float32 master weights;
             under LoRA also the adapters, {..., 'lora': {...}} (runtime/lora.py).
  opt_state: optimizer state of the `train.trainable` subtree only (under LoRA: the adapters').
  ema:       EMA of the `train.ema.subtrees` subtree (official: the trunk, not the MAF; under
             LoRA: the adapters).
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
  if not lora_enabled(t) and 'vae' in [p.split('/')[0] for p in t.trainable]:
    raise ValueError("train.trainable: 'vae' cannot be trained by the flow loss (its latents are "
                     "the regression target); train the autoencoder separately")

  def init(rng: jax.Array) -> TrainState:
    init_key, state_key = jax.random.split(rng)
    params = audiox.init_params(model, config.model, init_key)
    if lora_enabled(t):
      params = {**params, lora.ADAPTERS: lora.init_adapters(jax.random.fold_in(init_key, 1),
                                                              params, t.lora)}
    trainable, _ = optim.split_params(params, trainable_prefixes(t), 'train.trainable')
    ema, _ = optim.split_params(params, ema_prefixes(t), 'train.ema.subtrees')
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
  if lora_enabled(t):   # the base from the checkpoint, the adapters as initialised
    params = {**params, lora.ADAPTERS: state.params[lora.ADAPTERS]}
  ema = {}
  if t.ema.enabled:
    ema, _ = optim.split_params(params, ema_prefixes(t), 'train.ema.subtrees')
    ema = jax.tree.map(lambda x: x.copy(), ema)
  return state.replace(params=params, ema=ema)


def base_target(abstract_params: Any) -> Any:
  """What `train.init_from` must provide: the model tree without the adapters."""
  return lora.split(abstract_params)[0]


def inference_params(state: TrainState, t: mlc.ConfigDict, use_ema: bool = True,
                     merge_adapters: bool = True) -> Any:
  """The full AudioX tree with the EMA subtree (if any) in place of the online weights; under
  LoRA the (EMA) adapters merged into their kernels unless not `merge_adapters`."""
  params = state.params
  if use_ema and t.ema.enabled:
    _, rest = optim.split_params(state.params, ema_prefixes(t), 'train.ema.subtrees')
    params = optim.merge_params(rest, state.ema)
  return lora.merged(params, t.lora) if lora_enabled(t) and merge_adapters else params

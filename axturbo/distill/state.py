"""Distillation state, the teacher load (with hard checks) and the sharded initialization.

The frozen teacher (the full AudioX tree: conditioners, MAF, trunk, VAE) is NOT part of the
state: it is loaded from its inference checkpoint at every (re)start, passed to the steps as a
separate, never-donated argument, and never checkpointed again. The state holds what moves.
"""
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import struct
from jax.sharding import Mesh

from axturbo.distill import dmd
from axturbo.models import audiox
from axturbo.models.disc_head import DiscriminatorHeads
from axturbo.runtime import checkpoints, optim, settings, sharding


@struct.dataclass
class DistillState:
  """Everything a resumed distillation needs besides the teacher and the data iterator.

  step:            schedule position = batches consumed (int32); step n's randomness is
                   fold_in(rng, n) and `dmd.updates_at(n, ...)` picks which network(s) update.
  student_updates, fake_updates: optimizer updates applied to each group (drive the EMA decay;
                   each optax state counts its own updates for its LR schedule).
  skipped:         updates skipped because the loss or gradient norm was not finite.
  student, fake:   the `distill.trainable` subtrees ({'maf', 'trunk'}), float32.
  heads:           discriminator heads (DiscriminatorHeads params).
  ema:             EMA of `student` ({} when distill.ema.enabled is False).
  student_opt:     optax state of `student`; fake_opt: optax state of (fake, heads). Separate
                   states, so an idle group never moves (no momentum / weight decay drift).
  rng:             base PRNG key data, uint32 (2,).
  """
  step: jax.Array
  student_updates: jax.Array
  fake_updates: jax.Array
  skipped: jax.Array
  student: Any
  fake: Any
  heads: Any
  ema: Any
  student_opt: Any
  fake_opt: Any
  rng: jax.Array


def build_heads(m: mlc.ConfigDict) -> DiscriminatorHeads:
  return DiscriminatorHeads(m.disc.num_heads, m.disc.in_channels, m.disc.hidden,
                            m.disc.get('negative_slope', 0.2))


def check_distill_config(config: mlc.ConfigDict) -> None:
  """Raises ValueError naming the `--config.distill.*` field out of range or not fitting the
  model (before compiling)."""
  d, m = config.distill, config.model
  settings.check_loop(d, 'distill')
  settings.check_optimizer(d.student, 'distill.student')
  settings.check_optimizer(d.fake, 'distill.fake')
  settings.check_ema(d.ema, 'distill.ema')
  settings.number(d, 'num_steps', 'distill', low=1, integer=True)
  try:
    dmd.check_index_probs(d.index_probs, d.num_steps)
  except ValueError as e:
    raise ValueError(f'--config.distill.index_probs={tuple(d.index_probs)}: {e}') from None
  settings.number(d, 'guidance_scale', 'distill', low=0)
  settings.choice(d, 'normalizer', 'distill', dmd.NORMALIZERS)
  lo, hi = d.t_dmd_range
  if not (0 <= lo < hi <= 1):
    raise ValueError(f'--config.distill.t_dmd_range={tuple(d.t_dmd_range)}: must be (lo, hi) '
                     'with 0 <= lo < hi <= 1')
  settings.number(d, 'disc_max_t', 'distill', low=0, high=1, low_open=True)
  for key in ('dm_weight', 'adv_weight', 'fake_weight', 'disc_weight'):
    settings.number(d, key, 'distill', low=0)
  settings.choice(d, 'update_schedule', 'distill', dmd.SCHEDULES)
  for key in ('student_steps_per_cycle', 'fake_steps_per_cycle',
              'fake_updates_per_student_update'):
    settings.number(d, key, 'distill', low=1, integer=True)
  settings.number(d, 'batch_size', 'distill', low=0, integer=True)
  if d.disc_num_blocks != m.disc.num_heads:
    raise ValueError(f'distill.disc_num_blocks={d.disc_num_blocks} must equal '
                     f'model.disc.num_heads={m.disc.num_heads} (one head per read-out block)')
  if d.disc_num_blocks > m.trunk.depth:
    raise ValueError(f'distill.disc_num_blocks={d.disc_num_blocks} exceeds the trunk depth '
                     f'{m.trunk.depth}')
  if m.disc.in_channels != m.trunk.io_channels:
    raise ValueError(f'model.disc.in_channels={m.disc.in_channels} must equal '
                     f'model.trunk.io_channels={m.trunk.io_channels} (heads read velocities)')
  tops = {p.split('/')[0] for p in d.trainable}
  if tops - {'maf', 'trunk'}:
    raise ValueError(f'distill.trainable={tuple(d.trainable)}: only the MAF and the trunk train '
                     '(the conditioners are frozen and shared)')


# ---------------------------------------------------------------------------------------------
# Teacher.

def abstract_params(model: audiox.AudioX, m: mlc.ConfigDict) -> Any:
  """Boxed (logically named) abstract AudioX parameter tree; nothing materialised."""
  return jax.eval_shape(lambda: audiox.init_params(model, m, jax.random.key(0)))


def _config_diff(a: dict, b: dict, prefix: str = '') -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    if k not in a or k not in b:
      out.append(f'{prefix}{k} (only in {"the checkpoint" if k in a else "the config"})')
    elif isinstance(a[k], dict) and isinstance(b[k], dict):
      out += _config_diff(a[k], b[k], f'{prefix}{k}.')
    elif (list(a[k]) if isinstance(a[k], (list, tuple)) else a[k]) != (
        list(b[k]) if isinstance(b[k], (list, tuple)) else b[k]):
      out.append(f'{prefix}{k}: checkpoint {a[k]!r} vs config {b[k]!r}')
  return out


def load_teacher(directory: str | os.PathLike, model: audiox.AudioX, m: mlc.ConfigDict,
                 mesh: Mesh, rules=sharding.DEFAULT_RULES) -> tuple[Any, Any]:
  """(teacher params restored straight into their shards, their shardings).

  Hard failures (never a silently random or partial teacher): a missing directory, a
  model_config.json that differs from `config.model` in any key, a parameter tree whose keys or
  shapes differ from the model's, or a non-finite value.
  """
  given = str(directory or '')
  if not given or not checkpoints.as_path(given).is_dir():
    raise FileNotFoundError(f'--teacher {given!r}: no such checkpoint directory')
  directory = checkpoints.as_path(given)
  checkpoints.recover_swap(directory)
  kind = checkpoints.load_meta(directory).get('kind')
  if kind == 'student':
    raise ValueError(f'--teacher {directory}: is a student (meta.json kind "student"); '
                     "distillation needs a teacher: train.py's export or a converted teacher")
  have = checkpoints.load_model_config(directory).to_dict()
  diff = _config_diff(have, m.to_dict())
  if diff:
    more = f'; and {len(diff) - 5} more' if len(diff) > 5 else ''
    raise ValueError(f'--teacher {directory}: its model_config.json does not match '
                     f'config.model: {"; ".join(diff[:5])}{more}')
  target, shardings = sharding.abstract_with_shardings(abstract_params(model, m), mesh, rules)
  try:
    params = checkpoints.load_params(directory, target=target, partial=True)
  except Exception as e:  # orbax's message names the mismatching key; keep it
    raise ValueError(f'--teacher {directory}: parameters do not match the model: {e}') from e
  checkpoints.assert_same_tree(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                             target),
                                jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                             params), f'--teacher {directory}', values=False)
  bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(params)
         if not bool(jnp.all(jnp.isfinite(v)))]
  if bad:
    raise ValueError(f'--teacher {directory}: non-finite values in {bad[:5]}')
  return params, shardings


# ---------------------------------------------------------------------------------------------
# Initialization.

def make_init_fn(model: audiox.AudioX, config: mlc.ConfigDict, tx_student, tx_fake
                 ) -> Callable[[jax.Array, Any], DistillState]:
  """init(rng, teacher_trainable) -> DistillState: student = fake = EMA = the teacher's
  `distill.trainable` subtrees (boxed or not), heads random."""
  d, m = config.distill, config.model
  heads_module = build_heads(m)

  def init(rng: jax.Array, teacher_trainable: Any) -> DistillState:
    k_heads, k_state = jax.random.split(rng)
    feats = jnp.zeros((m.disc.num_heads, 1, m.trunk.seq_len, m.trunk.io_channels), jnp.float32)
    heads = heads_module.init(k_heads, feats)['params']
    copy = lambda tree: jax.tree.map(lambda x: x, tree)   # distinct buffers, same values
    student, fake = copy(teacher_trainable), copy(teacher_trainable)
    zero = jnp.zeros((), jnp.int32)
    return DistillState(step=zero, student_updates=zero, fake_updates=zero, skipped=zero,
                        student=student, fake=fake, heads=heads,
                        ema=copy(teacher_trainable) if d.ema.enabled else {},
                        student_opt=tx_student.init(student), fake_opt=tx_fake.init((fake, heads)),
                        rng=jax.random.key_data(k_state))

  return init


def trainable_part(params: Any, d: mlc.ConfigDict) -> Any:
  return optim.split_params(params, d.trainable, 'distill.trainable')[0]


def abstract_state(init_fn, model, config, mesh: Mesh, rules=sharding.DEFAULT_RULES
                   ) -> tuple[DistillState, DistillState]:
  """(abstract unboxed state with .sharding on every leaf, the shardings tree)."""
  teacher_boxed = trainable_part(abstract_params(model, config.model), config.distill)
  return sharding.abstract_with_shardings(
      jax.eval_shape(init_fn, jax.random.key(0), teacher_boxed), mesh, rules)


def init_state(init_fn, shardings: DistillState, seed: int, teacher: Any,
               d: mlc.ConfigDict) -> DistillState:
  """The initial state in its shards, then the hard check student == fake == teacher."""
  t_part = trainable_part(teacher, d)
  state = jax.jit(lambda r, t: nn.unbox(init_fn(r, t)), out_shardings=shardings)(
      jax.random.key(seed), t_part)
  if jax.process_count() == 1:   # names the first differing key
    checkpoints.assert_distill_init(jax.device_get(t_part), jax.device_get(state.student),
                                     jax.device_get(state.fake))
  elif not bool(_trees_equal(t_part, state.student) & _trees_equal(t_part, state.fake)):
    raise checkpoints.TreeMismatchError('student/fake init differs from the teacher')
  return state


@jax.jit
def _trees_equal(a: Any, b: Any) -> jax.Array:
  same = jax.tree.map(lambda x, y: jnp.array_equal(x, y), a, b)
  return jnp.all(jnp.stack(jax.tree.leaves(same)))


def student_export_params(state: DistillState, teacher: Any, d: mlc.ConfigDict) -> Any:
  """The full AudioX tree of the student: the teacher's frozen subtrees + the student's
  trainable ones (the EMA when enabled)."""
  _, frozen = optim.split_params(teacher, d.trainable, 'distill.trainable')
  return optim.merge_params(frozen, state.ema if d.ema.enabled else state.student)


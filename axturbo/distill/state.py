"""Distillation state, the teacher load (with hard checks) and the sharded initialization.

The frozen teacher (the full AudioX tree: conditioners, MAF, trunk, VAE) is NOT part of the
state: it is loaded from its inference checkpoint at every (re)start, passed to the steps as a
separate, never-donated argument, and never checkpointed again. The state holds what moves.

LoRA distillation (`distill.lora`, with `distill.init_student_from`): the student is the
student export's frozen `distill.trainable` subtrees plus adapters under 'lora' (as in
train.py's state), the fake model is adapters only, merged into the teacher's frozen subtrees
(the fake starts as the teacher in every distillation, so it needs no copy of its own). The
optimizers and the EMA cover the adapters (and the heads) alone.
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
from axturbo.runtime import checkpoints, lora, optim, settings, sharding


@struct.dataclass
class DistillState:
  """Everything a resumed distillation needs besides the teacher and the data iterator.

  step:            schedule position = batches consumed (int32); step n's randomness is
                   fold_in(rng, n) and `dmd.updates_at(n, ...)` picks which network(s) update.
  student_updates, fake_updates: optimizer updates applied to each group (drive the EMA decay;
                   each optax state counts its own updates for its LR schedule).
  skipped:         updates skipped because the loss or gradient norm was not finite.
  student, fake:   the `distill.trainable` subtrees ({'maf', 'trunk'}), float32. Under
                   `distill.lora`: student = {'maf', 'trunk' (frozen), 'lora': adapters},
                   fake = {'lora': adapters} (its base is the teacher's).
  heads:           discriminator heads (DiscriminatorHeads params).
  ema:             EMA of the student's trained part (`student_trained`: all of it, or its
                   adapters {'lora': ...} under LoRA); {} when distill.ema.enabled is False.
  student_opt:     optax state of the student's trained part; fake_opt: optax state of (fake,
                   heads). Separate states, so an idle group never moves (no momentum / weight
                   decay drift).
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
  if lora_enabled(d):
    lora.check_config(d.lora, 'distill.lora')
    if not d.init_student_from:
      raise ValueError('--config.distill.lora.enabled=True needs '
                       '--config.distill.init_student_from (the student export the adapters '
                       'adapt, e.g. a released AudioX-Turbo or an earlier distill.py export)')


def lora_enabled(d: mlc.ConfigDict) -> bool:
  return bool(d.get('lora') and d.lora.enabled)


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
  return _load_model('--teacher', directory, model, m, mesh, rules, refuse='student')


def apply_teacher_adapter(teacher: Any, shardings: Any, adapter_dir: str | os.PathLike,
                          teacher_dir: str | os.PathLike) -> Any:
  """The teacher with the adapter file `distill.teacher_lora` merged in (in its shards); one
  line naming both when the adapter was trained on another base."""
  try:
    adapters, info = lora.load_adapter(adapter_dir)
    lora.check_base(adapter_dir, info, teacher_dir)
  except ValueError as e:
    raise ValueError(f'--config.distill.teacher_lora: {e}') from None
  # Op by op, as `lora.apply_adapter_file` at load: the same values as a merged export.
  return jax.device_put(lora.apply(teacher, adapters, info['alpha'] / info['rank']), shardings)


def load_student_start(directory: str | os.PathLike, model: audiox.AudioX, m: mlc.ConfigDict,
                       mesh: Mesh, rules=sharding.DEFAULT_RULES) -> tuple[Any, Any]:
  """(the `distill.init_student_from` student export in its shards, their shardings), with the
  teacher's hard checks: its model config must be `config.model` (the teacher's), and it must be
  a student (a teacher or an adapter is refused)."""
  return _load_model('--config.distill.init_student_from', directory, model, m, mesh, rules,
                     refuse='teacher')


_WHAT = {'student': "distillation needs a teacher: train.py's export or a converted teacher",
         'teacher': 'the student starts from a student export: distill.py\'s <workdir>/export '
                    'or a converted AudioX-Turbo'}


def _load_model(flag: str, directory, model, m, mesh, rules, refuse: str) -> tuple[Any, Any]:
  given = str(directory or '')
  if not given or not checkpoints.as_path(given).is_dir():
    raise FileNotFoundError(f'{flag} {given!r}: no such checkpoint directory')
  directory = checkpoints.as_path(given)
  checkpoints.recover_swap(directory)
  kind = checkpoints.load_meta(directory).get('kind')
  if kind == refuse:
    raise ValueError(f'{flag} {directory}: is a {refuse} (meta.json kind "{refuse}"); '
                     f'{_WHAT[refuse]}')
  if kind == lora.KIND:
    raise ValueError(f'{flag} {directory}: a LoRA adapter, not a model checkpoint (merge it '
                     'into its base with `python -m axturbo.lora merge`)')
  have = checkpoints.load_model_config(directory).to_dict()
  diff = _config_diff(have, m.to_dict())
  if diff:
    more = f'; and {len(diff) - 5} more' if len(diff) > 5 else ''
    raise ValueError(f'{flag} {directory}: its model_config.json does not match '
                     f'config.model: {"; ".join(diff[:5])}{more}')
  target, shardings = sharding.abstract_with_shardings(abstract_params(model, m), mesh, rules)
  try:
    params = checkpoints.load_params(directory, target=target, partial=True)
  except Exception as e:  # orbax's message names the mismatching key; keep it
    raise ValueError(f'{flag} {directory}: parameters do not match the model: {e}') from e
  checkpoints.assert_same_tree(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                             target),
                                jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                             params), f'{flag} {directory}', values=False)
  bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(params)
         if not bool(jnp.all(jnp.isfinite(v)))]
  if bad:
    raise ValueError(f'{flag} {directory}: non-finite values in {bad[:5]}')
  return params, shardings


# ---------------------------------------------------------------------------------------------
# Initialization.

def make_init_fn(model: audiox.AudioX, config: mlc.ConfigDict, tx_student, tx_fake
                 ) -> Callable[..., DistillState]:
  """init(rng, teacher_trainable, student_start=None) -> DistillState: student = EMA =
  `student_start` (default: the teacher's `distill.trainable` subtrees), fake = the teacher's
  (boxed or not), heads random. Under `distill.lora` the student and the fake get zero-B adapters
  (the student's base is `student_start`, the fake's the teacher itself)."""
  d, m = config.distill, config.model
  heads_module = build_heads(m)
  # Adapters are made from the logically named tree (shapes and names only).
  boxed = trainable_part(abstract_params(model, m), d) if lora_enabled(d) else None
  if boxed is not None:   # a target outside `distill.trainable` stops here, naming the flag
    lora.target_kernels(boxed, d.lora.targets, 'distill.lora.targets')

  def init(rng: jax.Array, teacher_trainable: Any, student_start: Any = None) -> DistillState:
    k_heads, k_state = jax.random.split(rng)
    feats = jnp.zeros((m.disc.num_heads, 1, m.trunk.seq_len, m.trunk.io_channels), jnp.float32)
    heads = heads_module.init(k_heads, feats)['params']
    copy = lambda tree: jax.tree.map(lambda x: x, tree)   # distinct buffers, same values
    start = teacher_trainable if student_start is None else student_start
    if lora_enabled(d):
      k_student, k_fake = jax.random.split(jax.random.fold_in(rng, 1))
      adapters = lambda k: lora.init_adapters(k, boxed, d.lora, 'distill.lora.targets')
      student = {**copy(start), lora.ADAPTERS: adapters(k_student)}
      fake = {lora.ADAPTERS: adapters(k_fake)}
    else:
      student, fake = copy(start), copy(teacher_trainable)
    trained = student_trained(student, d)
    zero = jnp.zeros((), jnp.int32)
    return DistillState(step=zero, student_updates=zero, fake_updates=zero, skipped=zero,
                        student=student, fake=fake, heads=heads,
                        ema=copy(trained) if d.ema.enabled else {},
                        student_opt=tx_student.init(trained), fake_opt=tx_fake.init((fake, heads)),
                        rng=jax.random.key_data(k_state))

  return init


def trainable_part(params: Any, d: mlc.ConfigDict) -> Any:
  return optim.split_params(params, d.trainable, 'distill.trainable')[0]


def split_student(student: Any, d: mlc.ConfigDict) -> tuple[Any, Any]:
  """(what the student optimizer trains, the rest): (student, {}), or under LoRA
  ({'lora': adapters}, the frozen base)."""
  if not lora_enabled(d):
    return student, {}
  return optim.split_params(student, (lora.ADAPTERS,), 'distill.lora')


def student_trained(student: Any, d: mlc.ConfigDict) -> Any:
  return split_student(student, d)[0]


def student_network(student: Any, d: mlc.ConfigDict, key: jax.Array | None = None) -> Any:
  """The student's `distill.trainable` subtrees as the model reads them: under LoRA the
  adapters merged into the frozen base (with `distill.lora.dropout` when `key` is given)."""
  if not lora_enabled(d):
    return student
  base, adapters = lora.split(student)
  return _apply(base, adapters, d, key)


def fake_network(fake: Any, teacher: Any, d: mlc.ConfigDict, key: jax.Array | None = None
                 ) -> Any:
  """The fake model's subtrees: `fake`, or under LoRA its adapters merged into the teacher's."""
  if not lora_enabled(d):
    return fake
  return _apply(trainable_part(teacher, d), fake[lora.ADAPTERS], d, key)


def _apply(base, adapters, d, key):
  dropout = float(d.lora.dropout) if key is not None else 0.0
  return lora.apply(base, adapters, lora.scale(d.lora), dropout=dropout, key=key)


def abstract_state(init_fn, model, config, mesh: Mesh, rules=sharding.DEFAULT_RULES
                   ) -> tuple[DistillState, DistillState]:
  """(abstract unboxed state with .sharding on every leaf, the shardings tree)."""
  teacher_boxed = trainable_part(abstract_params(model, config.model), config.distill)
  return sharding.abstract_with_shardings(
      jax.eval_shape(init_fn, jax.random.key(0), teacher_boxed), mesh, rules)


def init_state(init_fn, shardings: DistillState, seed: int, teacher: Any,
               d: mlc.ConfigDict, student_start: Any = None) -> DistillState:
  """The initial state in its shards, then the hard check student == fake == teacher (the
  student == `student_start`'s `distill.trainable` part when given; under LoRA their bases, the
  fake's being the teacher itself, and every adapter's B zero)."""
  t_part = trainable_part(teacher, d)
  s_part = t_part if student_start is None else trainable_part(student_start, d)
  state = jax.jit(lambda r, t, s: nn.unbox(init_fn(r, t, s)), out_shardings=shardings)(
      jax.random.key(seed), t_part, s_part)
  student, fake = state.student, state.fake
  if lora_enabled(d):
    b = [x for p, x in jax.tree_util.tree_leaves_with_path((student_trained(student, d), fake))
         if jax.tree_util.keystr(p).endswith("'lora_b']")]
    if not all(bool(jnp.all(x == 0)) for x in b):
      raise checkpoints.TreeMismatchError('LoRA adapters must start with B = 0')
    student, fake = split_student(student, d)[1], t_part
  if jax.process_count() == 1 and student_start is None:   # names the first differing key
    checkpoints.assert_distill_init(jax.device_get(t_part), jax.device_get(student),
                                     jax.device_get(fake))
  elif jax.process_count() == 1:
    checkpoints.assert_same_tree(jax.device_get(s_part), jax.device_get(student),
                                 'student start vs student init')
    checkpoints.assert_same_tree(jax.device_get(t_part), jax.device_get(fake),
                                 'teacher vs fake init')
  elif not bool(_trees_equal(s_part, student) & _trees_equal(t_part, fake)):
    raise checkpoints.TreeMismatchError('student/fake init differs from its start')
  return state


@jax.jit
def _trees_equal(a: Any, b: Any) -> jax.Array:
  same = jax.tree.map(lambda x, y: jnp.array_equal(x, y), a, b)
  return jnp.all(jnp.stack(jax.tree.leaves(same)))


def frozen_part(params: Any, d: mlc.ConfigDict) -> Any:
  """The subtrees distillation never trains (conditioners, VAE, ...) of a full AudioX tree."""
  return optim.split_params(params, d.trainable, 'distill.trainable')[1]


def same_frozen_parts(a: Any, b: Any, d: mlc.ConfigDict) -> bool:
  """Whether two full AudioX trees have the same `frozen_part` (conditioners, VAE)."""
  return bool(_trees_equal(frozen_part(a, d), frozen_part(b, d)))


def student_export_params(state: DistillState, teacher: Any, d: mlc.ConfigDict,
                          frozen: Any = None, merge_adapters: bool = True) -> Any:
  """The full AudioX tree of the student: `frozen` (default: the teacher's `frozen_part`; with
  `distill.init_student_from`, that export's) + the student's trainable subtrees (the EMA when
  enabled); under LoRA the (EMA) adapters merged into the student's base, or, unless
  `merge_adapters`, the adapters alone (the tree an adapter file holds)."""
  frozen = frozen_part(teacher, d) if frozen is None else frozen
  trained, base = split_student(state.student, d)
  if d.ema.enabled:
    trained = state.ema
  if lora_enabled(d):
    if not merge_adapters:
      return trained[lora.ADAPTERS]
    trained = student_network(optim.merge_params(base, trained), d)
  return optim.merge_params(frozen, trained)

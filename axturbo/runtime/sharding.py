"""Mesh and sharding: the logical axis vocabulary, the logical -> mesh rules, the mesh itself,
how parameters, states and batches are laid out on it, and ahead-of-time compilation.

Parameters use the names below; activations use the `act_*` names so that the same logical
dimension can be sharded differently as a weight (FSDP) and as an activation (batch).
Mesh axes: 'data' (pure data parallel), 'fsdp' (data parallel + parameter sharding),
'tensor' (model parallel over heads / MLP hidden units).
"""

# Parameter axes.
PARAM_AXES = (
    'embed',       # model width (trunk 1536, conditioning 768, ...)
    'mlp',         # MLP hidden units
    'heads',       # attention heads (q/k/v output, attention output input)
    'kv',          # per-head feature size
    'qkv',         # fused q/k/v output of a projection, when it cannot be split by head
    'vocab',       # token vocabulary
    'conv_width',  # convolution taps (and 'conv_height' for 2-D patch embeddings)
    'conv_height',
    'channels',    # convolution channels in the VAE and heads ('channels_out' for the output
    'channels_out',  # side of a channels -> channels map: a name may not repeat in one array)
    'norm',        # normalisation scale/bias vectors
    'length',      # learned maps along a sequence axis (e.g. 384 -> 237; 'length_out' for
    'length_out',  # the output side)
    'layers',      # the scanned layer axis
    'experts',     # MAF expert tokens
)

# Activation axes.
ACTIVATION_AXES = ('act_batch', 'act_length', 'act_embed', 'act_heads', 'act_kv', 'act_mlp')

MESH_AXES = ('data', 'fsdp', 'tensor')

# Default rules: FSDP over the model width, tensor parallel over heads/MLP, batch over data+fsdp.
DEFAULT_RULES = (
    ('act_batch', ('data', 'fsdp')),
    ('act_length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv', None),
    ('act_mlp', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('qkv', 'tensor'),
    ('vocab', 'tensor'),
    ('conv_width', None),
    ('conv_height', None),
    ('channels', None),
    ('channels_out', None),
    ('length_out', None),
    ('norm', None),
    ('length', None),
    ('layers', None),
    ('experts', None),
)


# Batches are split along their leading axis over these mesh axes, replicated over 'tensor'.
BATCH_AXES = ('data', 'fsdp')


import contextlib  # noqa: E402  (kept below the vocabulary, which is data)
import math  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_collections as mlc  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec  # noqa: E402


def mesh_shape(requested: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fills the single -1 entry of `requested` so that the product equals `num_devices`."""
  requested = tuple(int(d) for d in requested)
  if len(requested) != len(MESH_AXES):
    raise ValueError(f'mesh shape {requested} must have one entry per axis {MESH_AXES}')
  free = [i for i, d in enumerate(requested) if d == -1]
  if len(free) > 1:
    raise ValueError(f'mesh shape {requested}: at most one axis may be -1')
  known = math.prod(d for d in requested if d != -1)
  if free:
    if num_devices % known:
      raise ValueError(f'mesh shape {requested} does not divide {num_devices} devices')
    requested = tuple(num_devices // known if d == -1 else d for d in requested)
  if math.prod(requested) != num_devices:
    raise ValueError(f'mesh shape {requested} uses {math.prod(requested)} devices, '
                     f'but {num_devices} are available')
  return requested


def make_mesh(requested: Sequence[int], devices: Sequence[Any] | None = None, *,
              dcn: Sequence[int] = (1, 1, 1), slice_of: Callable[[Any], Any] | None = None
              ) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all, across hosts).

  dcn: the across-slice factor of each axis (`config.mesh.dcn`): on a multi-slice TPU pod,
    axis i spans dcn[i] slices (joined by the slow data-center network) and requested[i] /
    dcn[i] devices inside each slice. (1, 1, 1): one slice, the topology-aware `jax.make_mesh`.
  slice_of: device -> its slice (default `device.slice_index`, which multi-slice TPUs report).

  Auto axes: the compiler propagates shardings between the logical constraints (Explicit axes
  would turn every constraint into an assertion).
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(requested, len(devices))
  dcn = _check_dcn(dcn, shape)
  if math.prod(dcn) > 1:
    grid = hybrid_device_grid(shape, dcn, slice_groups(devices, dcn, slice_of))
  else:
    try:
      grid = jax.make_mesh(shape, MESH_AXES, devices=devices).devices
    except (AssertionError, ValueError, NotImplementedError, TypeError):
      # Topology-unaware fallback (e.g. a device subset that make_mesh cannot lay out).
      grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _check_dcn(dcn: Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
  dcn = tuple(int(d) for d in dcn)
  if len(dcn) != len(MESH_AXES) or min(dcn) < 1:
    raise ValueError(f'config.mesh.dcn={dcn}: one positive across-slice factor per axis '
                     f'{MESH_AXES}, e.g. (2, 1, 1) for data parallelism over 2 slices')
  for axis, n, d in zip(MESH_AXES, shape, dcn):
    if n % d:
      raise ValueError(f'config.mesh.dcn={dcn}: the {axis} axis has {n} devices, which do not '
                       f'split over {d} slices')
  return dcn


def slice_groups(devices: Sequence[Any], dcn: Sequence[int],
                 slice_of: Callable[[Any], Any] | None = None) -> list[list[Any]]:
  """`devices` grouped by slice, in slice order; one-line errors when the devices report no
  slices or not prod(dcn) slices of equal size."""
  want = math.prod(dcn)
  if slice_of is None:
    if not all(hasattr(d, 'slice_index') for d in devices):
      raise ValueError(f'config.mesh.dcn={tuple(dcn)} asks for {want} slices, but these '
                       f'{devices[0].platform} devices report none (device.slice_index: '
                       'multi-slice TPU pods only); use config.mesh.dcn=(1, 1, 1)')
    slice_of = lambda d: d.slice_index
  groups: dict[Any, list[Any]] = {}
  for d in devices:
    groups.setdefault(slice_of(d), []).append(d)
  sizes = [len(g) for g in groups.values()]
  if len(groups) != want or len(set(sizes)) != 1:
    raise ValueError(f'config.mesh.dcn={tuple(dcn)} asks for {want} equal slices, but the '
                     f'{len(devices)} devices are in {len(groups)} slices of {sizes} devices')
  return [groups[k] for k in sorted(groups)]


def hybrid_device_grid(shape: Sequence[int], dcn: Sequence[int],
                       groups: Sequence[Sequence[Any]]) -> np.ndarray:
  """The device grid of a multi-slice mesh: axis i holds dcn[i] blocks of shape[i] // dcn[i]
  devices, each block inside one slice, the slice the outer (slow) factor.

  groups: prod(dcn) slices' devices (`slice_groups`), laid out in row-major order over dcn.
  Inside a slice the devices are arranged topology-aware (`mesh_utils.create_device_mesh`).
  """
  from jax.experimental import mesh_utils
  ici = tuple(n // d for n, d in zip(shape, dcn))
  blocks = []
  for g in groups:
    try:
      blocks.append(mesh_utils.create_device_mesh(ici, devices=list(g)))
    except (AssertionError, ValueError, NotImplementedError):
      blocks.append(np.asarray(g, dtype=object).reshape(ici))
  k = len(shape)
  grid = np.stack(blocks).reshape(*dcn, *ici)
  # (dcn_0, ..., ici_0, ...) -> (dcn_0, ici_0, dcn_1, ici_1, ...) -> shape.
  return grid.transpose([j for i in range(k) for j in (i, k + i)]).reshape(shape)


def mesh_rules(mesh_config: mlc.ConfigDict) -> tuple:
  """DEFAULT_RULES with `mesh.rules` ((logical, mesh axes) pairs) taking precedence."""
  overrides = {name: (tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in (mesh_config.get('rules') or ())}
  unknown = set(overrides) - set(PARAM_AXES + ACTIVATION_AXES)
  if unknown:
    raise ValueError(f'mesh.rules: unknown logical axes {sorted(unknown)}')
  return tuple((k, overrides.pop(k, v)) for k, v in DEFAULT_RULES) + tuple(overrides.items())


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide (e.g. 237 positions, 3 gates)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if names and dim % size == 0 else None)
  return PartitionSpec(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """NamedShardings for a tree of (possibly boxed) abstract arrays carrying logical names.

  Leaves without names are replicated. A mesh axis that does not divide a dimension is dropped
  for that dimension, so every tree can be placed on every mesh.
  """
  specs = nn.get_partition_spec(abstract_tree)
  specs = nn.logical_to_mesh(specs, rules)
  unboxed = nn.unbox(abstract_tree)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh)),
      specs, unboxed, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_with_shardings(boxed: Any, mesh: Mesh, rules=DEFAULT_RULES) -> tuple[Any, Any]:
  """(the unboxed abstract tree with `.sharding` on every leaf, the shardings tree) of a boxed
  abstract tree (e.g. `jax.eval_shape` of an init): what orbax restores into and jit lowers."""
  shardings = logical_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  return abstract, shardings


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, *args, rules=DEFAULT_RULES) -> Any:
  """Runs `init_fn(*args)` under jit with output shardings derived from its logical names.

  Parameters are created directly in their shards: a full-size model never sits on one host.
  Returns the unboxed tree.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  return jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)


# ---------------------------------------------------------------------------------------------
# Batches.

def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if global_batch_size < 1:
    raise ValueError(f'config.data.batch_size must be >= 1, got {global_batch_size}')
  if global_batch_size % ways:
    raise ValueError(f'data.batch_size={global_batch_size} is not divisible by data x fsdp = '
                     f'{ways} (mesh {dict(mesh.shape)})')


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host rows (b, ...) -> global arrays (b * process_count, ...) sharded over the batch."""
  shard = batch_sharding(mesh)
  n = jax.process_count()
  return {k: jax.make_array_from_process_local_data(shard, v, (v.shape[0] * n,) + v.shape[1:])
          for k, v in local.items()}


def abstract_batch(local_example: dict[str, np.ndarray], mesh: Mesh) -> dict:
  shard, n = batch_sharding(mesh), jax.process_count()
  return {k: jax.ShapeDtypeStruct((v.shape[0] * n,) + v.shape[1:], v.dtype, sharding=shard)
          for k, v in local_example.items()}


# ---------------------------------------------------------------------------------------------
# Tracing and compiling a step.

def mesh_context(mesh: Mesh, rules=DEFAULT_RULES,
                 activation_constraints: bool = False) -> contextlib.ExitStack:
  """Context for tracing a step.

  With `activation_constraints`, the mesh and logical rules are active so the models'
  `layers.constrain` hints take effect. Off, the hints are no-ops and XLA propagates shardings
  from the explicit parameter/batch shardings alone.
  """
  stack = contextlib.ExitStack()
  if activation_constraints:
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def compile_step(jitted, state: Any, batch: dict, mesh: Mesh, rules=DEFAULT_RULES,
                 activation_constraints: bool = False):
  """Ahead-of-time compile for abstract (ShapeDtypeStruct) or concrete arguments."""
  with mesh_context(mesh, rules, activation_constraints):
    return jitted.lower(state, batch).compile()

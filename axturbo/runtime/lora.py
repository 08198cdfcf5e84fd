"""LoRA adapters as a parameter tree of their own, merged into the base kernels by a transform.

The model definition never changes: an adapter tree mirrors the module paths of the kernels it
adapts, {'trunk': {'layers': {'block_0': {'q': {'lora_a': A, 'lora_b': B}}}}}, and

    kernel' = kernel + (alpha / rank) * A @ B          (Hu et al. 2021, Eq. 3, merged form)

is applied to the parameter tree before `model.apply` (in the train step, in distill.py's
student and fake steps under `distill.lora`, at load time, or once and written out by
`python -m axturbo.lora merge`). A kernel of shape (*lead, in, *out) whose
leading axes are stacked layers or convolution taps gets A (*lead, in, r) and B (*lead, r, *out):
one rank-r update per layer and per tap. B starts at zero, so a new adapter is the base exactly.

The adapters carry the logical axis names of the kernel's input / output axes (the rank axis is
unnamed: it is tiny and replicated), so they shard on the same mesh rules as everything else.

Adapter files (`save_adapter`): params/ (the adapter tree), model_config.json (the base's model
config), meta.json {'kind': 'lora', 'lora': {rank, alpha, targets, 'base': {path, config_hash,
step}}}. Applying one to another base is refused with one line naming both.
"""
import fnmatch
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import traverse_util

from axturbo.runtime import checkpoints

ADAPTERS = 'lora'          # the top-level key of the adapters inside a training state's params
KIND = 'lora'              # meta.json 'kind' of an adapter file
# Leading kernel axes that stack independent maps (scanned layers, convolution taps).
STACKED_AXES = ('layers', 'conv_width', 'conv_height')


def check_config(lo: mlc.ConfigDict, where: str = 'train.lora') -> None:
  """Raises ValueError naming the `--config.<where>.*` field that is out of range."""
  if int(lo.rank) < 1:
    raise ValueError(f'--config.{where}.rank={lo.rank}: must be >= 1')
  if not float(lo.alpha) > 0:
    raise ValueError(f'--config.{where}.alpha={lo.alpha}: must be > 0')
  if not 0 <= float(lo.dropout) < 1:
    raise ValueError(f'--config.{where}.dropout={lo.dropout}: must be in [0, 1)')
  if not lo.targets:
    raise ValueError(f'--config.{where}.targets=(): must name at least one module pattern')


def scale(lo: mlc.ConfigDict) -> float:
  return float(lo.alpha) / int(lo.rank)


def _names(leaf: Any, ndim: int) -> tuple:
  """The kernel's logical axis names; they say which leading axes are stacked maps."""
  names = getattr(leaf, 'names', None)
  if names is None:
    raise ValueError('LoRA adapters are made from the boxed (logically named) parameter tree, '
                     'e.g. `audiox.init_params` or its `jax.eval_shape`')
  return tuple(names)


def target_kernels(params: Any, targets: Sequence[str], where: str = 'train.lora.targets'
                   ) -> dict[str, Any]:
  """{module path: kernel leaf} of every '<module>/kernel' whose module path matches one of the
  fnmatch `targets` (e.g. 'trunk/layers/*/q'). A pattern matching no kernel is an error: a typo
  would otherwise train nothing."""
  flat = traverse_util.flatten_dict(params, sep='/')
  kernels = {k[:-len('/kernel')]: v for k, v in flat.items() if k.endswith('/kernel')}
  chosen = {}
  for pattern in targets:
    hits = {m: v for m, v in kernels.items() if fnmatch.fnmatchcase(m, pattern)}
    if not hits:
      raise ValueError(f'{where}: {pattern!r} matches no Dense/conv kernel (module paths look '
                       f'like {sorted(kernels)[:3]})')
    chosen.update(hits)
  for m, v in chosen.items():
    shape = nn.unbox(v).shape
    names = _names(v, len(shape))
    if len(shape) - _num_stacked(names) < 2:
      raise ValueError(f'{where}: {m}/kernel {shape} {names} has no input and output axis')
  return dict(sorted(chosen.items()))


def _num_stacked(names: tuple) -> int:
  n = 0
  while n < len(names) and names[n] in STACKED_AXES:
    n += 1
  return n


def init_adapters(key: jax.Array, params: Any, lo: mlc.ConfigDict,
                  where: str = 'train.lora.targets') -> dict:
  """Boxed adapter tree for the targeted kernels of the boxed tree `params` (arrays or
  ShapeDtypeStructs: only shapes and names are read); `where` names the targets' flag.

  A ~ N(0, 1/in) (so x @ A keeps x's scale), B = 0: the adapted model starts as the base.
  """
  adapters = {}
  r = int(lo.rank)
  for i, (module, leaf) in enumerate(target_kernels(params, lo.targets, where).items()):
    shape = nn.unbox(leaf).shape
    names = _names(leaf, len(shape))
    s = _num_stacked(names)
    lead, fan_in, out = shape[:s], shape[s], shape[s + 1:]
    a = jax.random.normal(jax.random.fold_in(key, i), (*lead, fan_in, r), jnp.float32)
    a = a / np.sqrt(fan_in)
    b = jnp.zeros((*lead, r, *out), jnp.float32)
    adapters[module] = {
        'lora_a': nn.LogicallyPartitioned(a, (*names[:s], names[s], None)),
        'lora_b': nn.LogicallyPartitioned(b, (*names[:s], None, *names[s + 1:])),
    }
  return traverse_util.unflatten_dict(
      {(*m.split('/'), k): v for m, ab in adapters.items() for k, v in ab.items()})


def delta(a: jax.Array, b: jax.Array) -> jax.Array:
  """A @ B per stacked index: (*lead, in, r) x (*lead, r, *out) -> (*lead, in, *out)."""
  out = b.shape[a.ndim - 1:]
  flat = jnp.einsum('...ir,...ro->...io', a, b.reshape(*b.shape[:a.ndim - 1], -1))
  return flat.reshape(*a.shape[:-1], *out)


def modules(adapters: Any) -> dict[str, dict]:
  """{module path: {"lora_a": A, "lora_b": B}} of an adapter tree."""
  flat = traverse_util.flatten_dict(adapters, sep='/')
  out: dict[str, dict] = {}
  for k, v in flat.items():
    module, leaf = k.rsplit('/', 1)
    out.setdefault(module, {})[leaf] = v
  return out


def apply(params: Any, adapters: Any, factor: float, *, dropout: float = 0.0,
          key: jax.Array | None = None) -> Any:
  """`params` with kernel + factor * A @ B on every adapted module (same dtypes, same tree).

  `dropout` (training): each input feature of A is dropped with that probability for the whole
  step and the rest scaled by 1 / (1 - p). The merged form has no per-example input to drop, so
  this is dropout on A's rows (the same mask for every example of a batch), not on x.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  for i, (module, ab) in enumerate(sorted(modules(adapters).items())):
    name = f'{module}/kernel'
    if name not in flat or set(ab) != {'lora_a', 'lora_b'}:
      raise ValueError(f'adapter {module}: no such kernel in the base, or not an (A, B) pair')
    kernel, a, b = flat[name], ab['lora_a'], ab['lora_b']
    if dropout > 0:
      keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout,
                                  a.shape[:-1] + (1,))
      a = jnp.where(keep, a / (1.0 - dropout), 0.0)
    d = delta(a.astype(jnp.float32), b.astype(jnp.float32))
    if d.shape != kernel.shape:
      raise ValueError(f'adapter {module}: A @ B is {d.shape}, the base kernel {kernel.shape}')
    flat[name] = (kernel.astype(jnp.float32) + factor * d).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat, sep='/')


def split(params: dict) -> tuple[dict, dict]:
  """(base, adapters) of a training tree that holds the adapters under ADAPTERS."""
  base = {k: v for k, v in params.items() if k != ADAPTERS}
  return base, params.get(ADAPTERS, {})


def merged(params: dict, lo: mlc.ConfigDict) -> dict:
  """The plain model tree of a training tree: the adapters merged into their kernels."""
  base, adapters = split(params)
  return apply(base, adapters, scale(lo)) if adapters else base


# ---------------------------------------------------------------------------------------------
# Adapter files.

def base_identity(base_dir: str | os.PathLike) -> dict:
  """{path, config_hash, step} of an inference checkpoint: what an adapter was trained on. The
  hash is the recorded one (an export's), else that of its model_config.json (a conversion)."""
  meta = checkpoints.load_meta(base_dir)
  config_hash = meta.get('config_hash') or checkpoints.config_hash(
      checkpoints.load_model_config(base_dir))
  return {'path': os.fspath(base_dir), 'config_hash': config_hash, 'step': meta.get('step')}


def save_adapter(directory: str | os.PathLike, adapters: Any, model_config: mlc.ConfigDict,
                 lo: mlc.ConfigDict, base: dict, meta: dict | None = None):
  """Writes an adapter file (replacing an older adapter there; anything else is refused)."""
  directory = checkpoints.as_path(directory)
  if checkpoints.holds_checkpoint(directory):
    recorded = checkpoints.load_meta(directory).get('kind')
    if recorded != KIND:
      raise FileExistsError(f'{directory}: holds a {recorded or "model"} checkpoint, not an '
                            'adapter; choose another directory')
  info = {'rank': int(lo.rank), 'alpha': float(lo.alpha), 'targets': list(lo.targets),
          'base': base}
  return checkpoints.save_params(directory, adapters, model_config,
                                 {**(meta or {}), 'kind': KIND, 'lora': info}, replace=True)


def load_adapter(directory: str | os.PathLike) -> tuple[dict, dict]:
  """(adapter tree as host arrays, its meta['lora']); one line naming the file when it is not
  an adapter."""
  meta = checkpoints.load_meta(directory)
  info = meta.get('lora')
  if meta.get('kind') != KIND or not isinstance(info, dict):
    raise ValueError(f'{directory}: not a LoRA adapter (meta.json kind is '
                     f'{meta.get("kind")!r}, expected {KIND!r})')
  for field, types in (('rank', int), ('alpha', (int, float)), ('base', dict)):
    if not isinstance(info.get(field), types) or isinstance(info.get(field), bool):
      raise ValueError(f'{checkpoints.as_path(directory) / checkpoints.META_FILE}: lora.{field} '
                       f'is missing or of the wrong type ({info.get(field)!r})')
  return checkpoints.load_params(directory), info


def check_base(adapter_dir: str | os.PathLike, info: dict, base_dir: str | os.PathLike) -> None:
  """Raises ValueError (one line naming both) unless `base_dir` is the base `info` records."""
  want, have = info['base'], base_identity(base_dir)
  same = (want.get('config_hash') == have['config_hash']
          and want.get('step') == have['step'])
  if not same:
    raise ValueError(
        f'{adapter_dir}: adapter trained on base {want.get("path")} (config {want.get("config_hash")}, '
        f'step {want.get("step")}), but {base_dir} is config {have["config_hash"]}, step '
        f'{have["step"]}')


def apply_adapter_file(params: Any, adapter_dir: str | os.PathLike, base_dir: str | os.PathLike
                       ) -> Any:
  """`params` (the base's tree, read from `base_dir`) with the adapter file merged in."""
  adapters, info = load_adapter(adapter_dir)
  check_base(adapter_dir, info, base_dir)
  return jax.tree.map(np.asarray, apply(params, adapters, info['alpha'] / info['rank']))

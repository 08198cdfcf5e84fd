"""The official model_config.json -> the `config.model` fields it determines.

The official release describes each model with a stable-audio-tools style JSON file
(`configs/audiox_turbo_infer_4step.json`: `model.diffusion.config {embed_dim, depth, num_heads,
...}`, `model.pretransform`, `model.conditioning`). Several of its numbers do not mean what
their names say (docs/official.md, "Networks and weights"), so typing them into our config by
hand is a foot-gun: "num_heads": 12 at width 120 is 10 heads of 12, and the FFN width is
rounded up to a multiple of 256. `model_fields` reads the file the way the official code does
and returns our field values; `apply` writes them into a `config.model` section.

Strict, like the weight converter: every key of the file is mapped, checked against the value
axturbo reproduces, or on a documented list of keys that do not shape the converted networks.
An unknown key, a missing size key or an unsupported value is a ConversionError naming the
file and the key. Sizes the official code hard-wires rather than reads from the file (the
768-wide MAF, CLIP, the video conditioner's towers, the 384 conditioning tokens) are not
derived: they stay as the --config file has them.
"""
import json
import math
import pathlib
from typing import Any

from axturbo.convert.common import ConversionError
from axturbo.convert.mmdit import official_trunk_sizes

_REQUIRED = object()

# Conditioner ids in the order the official wrapper concatenates their tokens; axturbo's MAF
# and trunk are built for exactly these three.
COND_IDS = ('video_prompt', 'text_prompt', 'audio_prompt')
COND_TYPES = {'video_prompt': 'clip-with-sync-w-empty-feat', 'text_prompt': 't5',
              'audio_prompt': 'audio_autoencoder'}


class _Section:
  """A read-once view of one JSON object: each key must be read, checked or ignored, and
  `close` reports the first key nobody asked for."""

  def __init__(self, data: Any, path: str, file: str):
    if not isinstance(data, dict):
      raise ConversionError(f'{file}: {path or "the file"} must be a JSON object, found '
                            f'{type(data).__name__}')
    self.data, self.path, self.file = data, path, file
    self.seen: set[str] = set()

  def name(self, key: str) -> str:
    return f'{self.path}.{key}' if self.path else key

  def error(self, key: str, what: str) -> ConversionError:
    return ConversionError(f'{self.file}: {self.name(key)} {what}')

  def get(self, key: str, default: Any = _REQUIRED) -> Any:
    self.seen.add(key)
    if key in self.data:
      return self.data[key]
    if default is _REQUIRED:
      raise ConversionError(f'{self.file}: missing key {self.name(key)}')
    return default

  def int(self, key: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
    value = self.get(key, default)
    # bool is an int in Python; a size of `true` is a typo, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise self.error(key, f'= {json.dumps(value)}: expected an integer >= {minimum}')
    return value

  def number(self, key: str, default: Any = _REQUIRED) -> float:
    value = self.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise self.error(key, f'= {json.dumps(value)}: expected a number')
    return float(value)

  def ints(self, key: str) -> tuple[int, ...]:
    value = self.get(key)
    if not (isinstance(value, list) and value and
            all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
      raise self.error(key, f'= {json.dumps(value)}: expected a list of positive integers')
    return tuple(value)

  def expect(self, key: str, want: Any, default: Any = _REQUIRED) -> None:
    """The value must be `want` (the official default stands in for an absent key)."""
    value = self.get(key, default)
    if value != want:
      raise self.error(key, f'= {json.dumps(value)} is not supported: axturbo reproduces '
                       f'{json.dumps(want)}' + ('' if key in self.data else ' (the official '
                                                 'default applies: the key is absent)'))

  def sub(self, key: str, default: Any = _REQUIRED) -> '_Section | None':
    value = self.get(key, default)
    return None if value is None else _Section(value, self.name(key), self.file)

  def ignore(self, *keys: str) -> None:
    self.seen.update(keys)

  def close(self) -> None:
    unknown = [k for k in self.data if k not in self.seen]
    if unknown:
      more = f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''
      raise ConversionError(f'{self.file}: unknown key {self.name(unknown[0])}{more}')


def _trunk(c: _Section, io_channels: int) -> dict:
  """`model.diffusion.config` (MMDiffusionTransformer arguments) -> trunk fields."""
  embed_dim, depth = c.int('embed_dim'), c.int('depth')
  heads = c.int('num_heads')
  try:
    sizes = official_trunk_sizes(embed_dim, heads, c.number('mlp_ratio', 4.0))
  except ConversionError as e:  # add the file and the key to the rule's message
    raise c.error('num_heads', f'= {heads}: {e}') from e
  trunk_io = c.int('io_channels')
  if trunk_io != io_channels:
    raise c.error('io_channels', f'= {trunk_io} != model.io_channels = {io_channels} (the '
                  'sampler and the trunk must agree)')
  kernel = c.int('kernel_size', 3)
  if kernel % 2 == 0 or kernel == 1:
    # Even kernels change the sequence length; kernel 1 builds nn.Linear blocks instead.
    raise c.error('kernel_size', f'= {kernel} is not supported: axturbo reproduces odd '
                  'kernels >= 3')
  trunk_len = c.int('_latent_seq_len', 237, minimum=2)
  # At these sizes the official code swaps a projection for nn.Identity; our trunk always has
  # both maps, so such a checkpoint would lack their tensors.
  if embed_dim == 768:
    raise c.error('embed_dim', '= 768 is not supported: the official trunk then has no '
                  'proj_mm_tokens (nn.Identity)')
  if trunk_len == 384:
    raise c.error('_latent_seq_len', '= 384 is not supported: the official trunk then has no '
                  'proj_mm_seq_len (nn.Identity)')
  c.expect('transformer_type', 'continuous_transformer', 'x-transformers')
  c.expect('global_cond_type', 'prepend', 'prepend')
  c.expect('patch_size', 1, 1)
  c.expect('input_concat_dim', 0, 0)
  c.expect('prepend_cond_dim', 0, 0)
  # Sizes of tensors the forward pass never uses (DEAD_TENSORS: the conditioning width the
  # trunk reads is model.conditioning.cond_dim), stored-but-unread flags, and the frame rate
  # the official factory pops before building the network.
  c.ignore('cond_token_dim', 'global_cond_dim', 'project_cond_tokens', 'project_global_cond',
           'fusion_depth', 'condition_mask_type', 'video_fps')
  c.close()
  return {'trunk.io_channels': io_channels, 'trunk.embed_dim': embed_dim, 'trunk.depth': depth,
          **{f'trunk.{k}': v for k, v in sizes.items()}, 'trunk.kernel_size': kernel,
          'trunk.seq_len': trunk_len - 1}


def _diffusion(d: _Section, io_channels: int) -> dict:
  """`model.diffusion` -> trunk and MAF fields."""
  d.expect('type', 'mmdit')
  ids = d.get('cross_attention_cond_ids')
  if ids != list(COND_IDS):
    raise d.error('cross_attention_cond_ids', f'= {json.dumps(ids)} is not supported: axturbo '
                  f'reproduces {json.dumps(list(COND_IDS))}')
  for key in ('global_cond_ids', 'input_concat_ids', 'prepend_cond_ids'):
    d.expect(key, [], [])
  d.expect('gate', True, False)
  d.expect('gate_type', 'MAF', 'sparse_gated')
  d.expect('diffusion_objective', 'rectified_flow', 'v')
  fields = {}
  gate = d.sub('gate_type_config', {})
  # The official MAF_Block defaults, used when the file leaves a key out.
  fields['maf.num_experts_per_modality'] = gate.int('num_experts_per_modality', 64)
  fields['maf.num_heads'] = gate.int('num_heads', 12)
  fields['maf.num_layers'] = gate.int('num_fusion_layers', 4)
  gate.close()
  fields.update(_trunk(d.sub('config'), io_channels))
  d.close()
  return fields


def _oobleck(c: _Section, role: str) -> dict:
  """One `encoder`/`decoder` entry of an autoencoder config -> its sizes."""
  c.expect('type', 'oobleck')
  c.ignore('requires_grad')
  if role == 'decoder':
    c.expect('soft_clip', False, False)
  cfg = c.sub('config')
  sizes = {'channels': cfg.int('channels'), 'c_mults': cfg.ints('c_mults'),
           'strides': cfg.ints('strides'), 'latent_dim': cfg.int('latent_dim')}
  sizes['io'] = cfg.int('in_channels' if role == 'encoder' else 'out_channels')
  cfg.expect('use_snake', True, False)
  cfg.expect('antialias_activation', False, False)
  if role == 'decoder':
    cfg.expect('final_tanh', False, True)
    cfg.expect('use_nearest_upsample', False, False)
  cfg.close()
  c.close()
  return sizes


def _pretransform(p: _Section) -> dict:
  """`model.pretransform` (an Oobleck VAE) -> vae fields."""
  p.expect('type', 'autoencoder')
  p.expect('scale', 1.0, 1.0)
  p.ignore('iterate_batch', 'model_half', 'chunked')  # how it is run, not what it computes
  c = p.sub('config')
  enc, dec = _oobleck(c.sub('encoder'), 'encoder'), _oobleck(c.sub('decoder'), 'decoder')
  latent_dim = c.int('latent_dim')
  for key in ('channels', 'c_mults', 'strides'):
    if enc[key] != dec[key]:
      raise c.error(f'decoder.config.{key}', f'= {json.dumps(dec[key])} differs from the '
                    f'encoder\'s {json.dumps(enc[key])}; axturbo\'s VAE has one value')
  # The VAE bottleneck splits the encoder output into mean and scale halves.
  if enc['latent_dim'] != 2 * latent_dim or dec['latent_dim'] != latent_dim:
    raise c.error('latent_dim', f'= {latent_dim} needs encoder latent_dim {2 * latent_dim} and '
                  f'decoder latent_dim {latent_dim} (the VAE bottleneck halves the channels)')
  ratio, io = c.int('downsampling_ratio'), c.int('io_channels')
  if ratio != math.prod(enc['strides']):
    raise c.error('downsampling_ratio', f'= {ratio} != the product of the strides '
                  f'{math.prod(enc["strides"])}')
  if io != enc['io']:
    raise c.error('io_channels', f'= {io} != encoder in_channels {enc["io"]}')
  c.expect('in_channels', None, None)
  c.expect('out_channels', None, None)
  c.expect('pretransform', None, None)
  bottleneck = c.sub('bottleneck')
  bottleneck.expect('type', 'vae')
  bottleneck.close()
  c.close()
  p.close()
  return {'vae.in_channels': enc['io'], 'vae.out_channels': dec['io'],
          'vae.channels': enc['channels'], 'vae.c_mults': enc['c_mults'],
          'vae.strides': enc['strides'], 'vae.latent_dim': latent_dim}


def _conditioner(c: _Section, ident: str, pretransform: Any) -> dict:
  """One conditioner's `config` -> fields (video: none, its sizes are hard-wired)."""
  c.expect('project_out', False, False)  # True adds a Linear that axturbo does not have
  fields = {}
  if ident == 'video_prompt':
    c.expect('sync_type', 'add', 'add')
    c.expect('temporal_transformer', True, True)
    c.expect('mask_ratio', 0, 0)  # > 0 drops CLIP tokens and so changes the tower's sizes
    c.ignore('clip_model_name', 'video_fps', 'in_features', 'out_features', 'enable_grad',
             'mask_type')  # overwritten in the official constructor, or training-only
  elif ident == 'text_prompt':
    fields['text.max_length'] = c.int('max_length', 128)
    # The tower's sizes are model.t5 and its weights come from --t5 or the checkpoint.
    c.ignore('t5_model_name', 'enable_grad', 'mask_ratio', 'mask_type')
  else:
    fields['audio_prompt.latent_seq_len'] = c.int('latent_seq_len', 237)
    fields['audio_prompt.mask_ratio_start'] = c.number('mask_ratio_start', 0)
    fields['audio_prompt.mask_ratio_end'] = c.number('mask_ratio_end', 0)
    if c.get('pretransform_config') != pretransform:
      raise c.error('pretransform_config', 'differs from model.pretransform: axturbo\'s '
                    'prompt encoder has the sizes of model.vae')
    c.ignore('sample_rate', 'pretransform_ckpt_path')  # the weights come from the checkpoint
  c.close()
  return fields


def _conditioning(c: _Section, pretransform: Any) -> dict:
  """`model.conditioning` -> the conditioning width and the conditioners' fields."""
  cond_dim = c.int('cond_dim')
  entries = c.get('configs')
  if not isinstance(entries, list):
    raise c.error('configs', 'must be a list')
  fields = {'cond_dim': cond_dim, 'trunk.cond_dim': cond_dim,
            'audio_prompt.output_dim': cond_dim}
  found = []
  for i, raw in enumerate(entries):
    entry = _Section(raw, f'{c.name("configs")}[{i}]', c.file)
    ident = entry.get('id')
    if ident not in COND_IDS or ident in found:
      raise entry.error('id', f'= {json.dumps(ident)} is not supported: axturbo has one each '
                        f'of {json.dumps(list(COND_IDS))}')
    entry.expect('type', COND_TYPES[ident])
    fields.update(_conditioner(entry.sub('config'), ident, pretransform))
    entry.close()
    found.append(ident)
  missing = [i for i in COND_IDS if i not in found]
  if missing:
    raise c.error('configs', f'has no conditioner with id {json.dumps(missing[0])}')
  c.close()
  return fields


# `config.model` fields an official model_config.json determines (model_fields), by prefix.
DERIVED = ('sample_rate', 'audio_samples', 'video_fps', 'cond_dim', 'text.max_length',
           'audio_prompt.latent_seq_len', 'audio_prompt.mask_ratio_start',
           'audio_prompt.mask_ratio_end', 'audio_prompt.output_dim',
           'maf.num_experts_per_modality', 'maf.num_heads', 'maf.num_layers',
           'trunk.cond_dim', 'trunk.depth', 'trunk.embed_dim', 'trunk.head_dim',
           'trunk.io_channels', 'trunk.kernel_size', 'trunk.mlp_hidden', 'trunk.num_heads',
           'trunk.seq_len', 'vae.')


def derives(field: str) -> bool:
  """Whether --official_config sets the dotted `config.model` field `field`."""
  return any(field == p or (p.endswith('.') and field.startswith(p)) for p in DERIVED)


def model_fields(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads an official model_config.json into {dotted `config.model` field: value}.

  The trunk's head split and FFN width come from `official_trunk_sizes`. Sections the file
  leaves out (`pretransform`, `conditioning`) determine nothing; their fields keep the values
  of the --config file.
  Raises:
    ConversionError: one line naming the file and the key (unknown, missing, unsupported).
  """
  file = str(path)
  try:
    data = json.loads(pathlib.Path(path).read_text())
  except FileNotFoundError as e:
    raise ConversionError(f'{file}: no such file') from e
  except (ValueError, UnicodeDecodeError) as e:
    raise ConversionError(f'{file}: not a JSON file ({e})') from e
  top = _Section(data, '', file)
  model_type = top.get('model_type')
  if model_type not in ('diffusion_cond', 'diffusion_dmd'):  # both build the same network
    raise top.error('model_type', f'= {json.dumps(model_type)} is not supported: axturbo '
                    'reproduces "diffusion_cond" and "diffusion_dmd"')
  fields = {'sample_rate': top.int('sample_rate')}
  if 'sample_size' in top.data:
    fields['audio_samples'] = top.int('sample_size')
  if 'video_fps' in top.data:
    fields['video_fps'] = top.int('video_fps')
  # Training-loop settings, the dataset's channel count (the VAE's own come from the
  # pretransform) and a value the official code never reads.
  top.ignore('training', 'audio_channels', 'conditioning_seconds')
  model = top.sub('model')
  io_channels = model.int('io_channels')
  fields.update(_diffusion(model.sub('diffusion'), io_channels))
  pretransform = model.get('pretransform', None)
  if pretransform is not None:
    fields.update(_pretransform(model.sub('pretransform')))
  if model.get('conditioning', None) is not None:
    fields.update(_conditioning(model.sub('conditioning'), pretransform))
  model.close()
  top.close()
  return fields


def apply(m, fields: dict[str, Any]) -> None:
  """Writes `fields` (from model_fields) into the `config.model` section `m`, in place."""
  for dotted, value in fields.items():
    *parents, leaf = dotted.split('.')
    node = m
    for part in parents:
      node = node[part]
    node[leaf] = value


def describe(fields: dict[str, Any]) -> str:
  """One line: which fields were set, and to what."""
  return ', '.join(f'model.{k}={v}' for k, v in fields.items())

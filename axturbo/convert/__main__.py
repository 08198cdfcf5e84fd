r"""Convert official AudioX-Turbo weights into an axturbo checkpoint.

  python -m axturbo.convert --config configs/official.py \
      [--official_config configs/audiox_turbo_infer_4step.json] \
      --checkpoint checkpoints/audiox_turbo.ckpt --vae checkpoints/vae.ckpt \
      --t5 local/t5-base [--clip local/clip-vit-base-patch32] \
      [--synchformer checkpoints/synchformer_state_dict.pth] --out ckpt/turbo

`--official_config` reads the official model_config.json the checkpoint was trained with and
overrides every `model` field of --config that it determines (the trunk's sizes, head split
and FFN width included: official "num_heads": C at width D is D // C heads; see
axturbo/convert/official_config.py); one line says which fields it set. Without it, the
--config sizes are used as written, and a head split that does not tile the width is refused.

`--checkpoint` is the student (`audiox_turbo.ckpt`), the teacher (`pretrained_ckpt.ckpt`) or a
full distillation checkpoint (then say which network with `--network`). `.ckpt/.pt/.pth/.bin`
files are read with torch's weights-only unpickler (torch needed; no code in them ever runs);
`.safetensors` needs no torch. Everything is read from local paths.

`--t5` is required when `model.text.tokenizer` is 'hf' (its tokenizer files are copied into the
checkpoint). The T5 weights come from the checkpoint when it holds a copy (an official run with
T5 `enable_grad` saves one), else from the --t5 folder; with neither, conversion stops with an
error naming both, whatever the tokenizer. `--synchformer` adds the video sync-feature
extractor (params['synchformer'], sized by the config's `model.synchformer` section or else the
released sizes, which are then written into model_config.json).
"""
import pathlib
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from axturbo.runtime import checkpoints
from axturbo.convert import mmdit, official, official_config, torch_io
from axturbo.convert import synchformer as synchformer_convert
from axturbo.models import audiox
from axturbo.models import synchformer as synchformer_model

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/official.py',
                                          'Config file whose `model` section sizes the networks.')
_OFFICIAL_CONFIG = flags.DEFINE_string(
    'official_config', None, 'Official model_config.json; overrides the --config model fields '
    'it determines (trunk sizes and head split, FFN width, MAF, VAE, conditioner lengths).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Official .ckpt or .safetensors file.')
_NETWORK = flags.DEFINE_enum('network', None, ['student', 'teacher', 'fake'],
                             'Which network of a full distillation checkpoint to convert.')
_KIND = flags.DEFINE_enum('kind', None, ['student', 'teacher'],
                          'What meta.json records, and so which sampler runs by default '
                          '(default: from --network, else student, the released model; '
                          'pretrained_ckpt.ckpt is a teacher).')
_VAE = flags.DEFINE_string('vae', None, 'vae.ckpt (replaces the checkpoint\'s own VAE copy).')
_T5 = flags.DEFINE_string('t5', None, 'Local Hugging Face t5-base folder (weights + tokenizer); '
                          "required for model.text.tokenizer 'hf'.")
_CLIP = flags.DEFINE_string('clip', None, 'Local CLIP folder; only if the checkpoint has none.')
_SYNCHFORMER = flags.DEFINE_string('synchformer', None,
                                   'synchformer_state_dict.pth (only vfeat_extractor.* is read).')
_OUT = flags.DEFINE_string('out', None, 'New directory for the axturbo checkpoint.')

TOKENIZER_FILES = ('spiece.model', 'tokenizer.json', 'tokenizer_config.json',
                   'special_tokens_map.json', 'added_tokens.json', 'config.json')


def _copy_tokenizer(t5_dir: pathlib.Path, out: pathlib.Path) -> None:
  """Copies the tokenizer into the checkpoint (out/tokenizer) so that it is self-contained.

  Called by save_params on its staging folder, which is renamed into place only once complete.
  """
  dest = out / 'tokenizer'
  dest.mkdir(parents=True, exist_ok=True)
  for name in TOKENIZER_FILES:
    if (t5_dir / name).is_file():
      shutil.copy2(t5_dir / name, dest / name)


def _hand_given(argv: list[str]) -> dict[str, str]:
  """{dotted model field: value text} of the `--config.model.*` overrides on the command line."""
  given = {}
  for a in argv:
    if a.startswith('--config.model.'):
      name, _, value = a[len('--config.model.'):].partition('=')
      given[name] = value
  return given


def _model_config():
  """--config's model section with the --official_config fields written over it."""
  m = _CONFIG.value.model
  given = _hand_given(sys.argv[1:])
  if _OFFICIAL_CONFIG.value:
    fields = official_config.model_fields(_OFFICIAL_CONFIG.value)
    for name in sorted(set(given) & set(fields)):
      logging.warning('--official_config %s sets model.%s=%s, replacing '
                      '--config.model.%s=%s', _OFFICIAL_CONFIG.value, name, fields[name], name,
                      given[name])
    official_config.apply(m, fields)
    print(f'{_OFFICIAL_CONFIG.value} set {official_config.describe(fields)}', flush=True)
  else:
    derived = sorted(f for f in given if official_config.derives(f))
    if derived:
      logging.warning('%s given by hand; --official_config <the checkpoint\'s '
                      'model_config.json> derives them from the official file (a head split '
                      'the wrong way round converts without an error but is wrong)',
                      ', '.join(f'model.{f}' for f in derived))
  mmdit.check_sizes(m.trunk)  # before the (slow) checkpoint read
  if _SYNCHFORMER.value:  # refused now, not at the first Generator.load
    misfit = audiox.synchformer_misfit(m, synchformer_model.from_config(m.get('synchformer')))
    if misfit:
      raise ValueError(f'--synchformer {_SYNCHFORMER.value}: {misfit}; set model.synchformer '
                       'or model.video to fit')
  return m


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # orbax logs ~30 INFO lines per save
    logging.set_verbosity(logging.WARNING)
  for flag in (_CHECKPOINT, _OUT):
    if not flag.value:
      sys.exit(f'error: --{flag.name} is required')
  out = pathlib.Path(_OUT.value)
  # Checked before the long conversion; save_params would refuse either case only at the end.
  if out.is_dir() and any(out.iterdir()):
    what = 'already holds a checkpoint' if checkpoints.holds_checkpoint(out) else 'is not empty'
    sys.exit(f'error: {out} {what}; choose a new --out directory')
  try:
    m = _model_config()
    if m.text.tokenizer == 'hf' and not _T5.value:
      sys.exit("error: --t5 is required: model.text.tokenizer is 'hf', whose tokenizer "
                           'files are read from that folder')
    print(f'reading {_CHECKPOINT.value}', flush=True)
    arrays = torch_io.canonicalize(torch_io.load_state_dict(_CHECKPOINT.value),
                                   _CHECKPOINT.value, network=_NETWORK.value)
    vae_arrays = None
    if _VAE.value:
      print(f'reading {_VAE.value}', flush=True)
      vae_arrays = torch_io.load_state_dict(_VAE.value)
    print('mapping tensors:', flush=True)
    params = official.convert(arrays, m, source=_CHECKPOINT.value, vae_arrays=vae_arrays,
                              vae_source=_VAE.value or '', t5_dir=_T5.value,
                              clip_dir=_CLIP.value)
    if _SYNCHFORMER.value:
      print(f'reading {_SYNCHFORMER.value}', flush=True)
      extractor = synchformer_model.from_config(m.get('synchformer'))
      params['synchformer'] = synchformer_convert.convert(
          torch_io.load_state_dict(_SYNCHFORMER.value), extractor, source=_SYNCHFORMER.value)
  # ConversionError is a ValueError; so are the models' own size checks: all are config or
  # file problems the message names, so one line says more than a traceback.
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  m = m.copy_and_resolve_references()
  if _SYNCHFORMER.value:
    m.synchformer = synchformer_model.config_of(extractor)
  populate = None
  if m.text.tokenizer == 'hf':
    m.text.tokenizer_dir = 'tokenizer'
    populate = lambda folder: _copy_tokenizer(pathlib.Path(_T5.value), folder)
  kind = _KIND.value or {'teacher': 'teacher', 'fake': 'teacher'}.get(_NETWORK.value, 'student')
  checkpoints.save_params(out, params, m, meta={
      'kind': kind, 'converted_from': _CHECKPOINT.value, 'network': _NETWORK.value, 'vae': _VAE.value,
      't5': _T5.value, 'clip': _CLIP.value, 'synchformer': _SYNCHFORMER.value,
      'official_config': _OFFICIAL_CONFIG.value}, populate=populate)
  print(f'wrote {out} (a {kind}; --kind to change)')


if __name__ == '__main__':
  app.run(main)

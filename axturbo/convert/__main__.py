r"""Convert official AudioX-Turbo weights into an axturbo checkpoint.

  python -m axturbo.convert --config configs/official.py \
      --checkpoint checkpoints/audiox_turbo.ckpt --vae checkpoints/vae.ckpt \
      --t5 local/t5-base [--clip local/clip-vit-base-patch32] \
      [--synchformer checkpoints/synchformer_state_dict.pth] --out ckpt/turbo

`--checkpoint` is the student (`audiox_turbo.ckpt`), the teacher (`pretrained_ckpt.ckpt`) or a
full distillation checkpoint (then say which network with `--network`). `.ckpt/.pt/.pth/.bin`
files are read with torch's weights-only unpickler (torch needed; no code in them ever runs);
`.safetensors` needs no torch. Everything is read from local paths. `--synchformer` adds the
video sync-feature extractor (params['synchformer'], sized by the config's `model.synchformer`
section or else the released sizes, which are then written into model_config.json).
"""
import pathlib
import shutil
import sys

from absl import app, flags
from ml_collections import config_flags

from axturbo.runtime import checkpoints
from axturbo.convert import official, torch_io
from axturbo.convert import synchformer as synchformer_convert
from axturbo.convert.common import ConversionError

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/official.py',
                                          'Config file whose `model` section sizes the networks.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Official .ckpt or .safetensors file.')
_NETWORK = flags.DEFINE_enum('network', None, ['student', 'teacher', 'fake'],
                             'Which network of a full distillation checkpoint to convert.')
_VAE = flags.DEFINE_string('vae', None, 'vae.ckpt (replaces the checkpoint\'s own VAE copy).')
_T5 = flags.DEFINE_string('t5', None, 'Local Hugging Face t5-base folder (weights + tokenizer).')
_CLIP = flags.DEFINE_string('clip', None, 'Local CLIP folder; only if the checkpoint has none.')
_SYNCHFORMER = flags.DEFINE_string('synchformer', None,
                                   'synchformer_state_dict.pth (only vfeat_extractor.* is read).')
_OUT = flags.DEFINE_string('out', None, 'New directory for the axturbo checkpoint.')

TOKENIZER_FILES = ('spiece.model', 'tokenizer.json', 'tokenizer_config.json',
                   'special_tokens_map.json', 'added_tokens.json', 'config.json')


def _copy_tokenizer(t5_dir: pathlib.Path, out: pathlib.Path) -> str:
  """Copies the tokenizer into the checkpoint so that it is self-contained."""
  dest = out / 'tokenizer'
  dest.mkdir(parents=True, exist_ok=True)
  for name in TOKENIZER_FILES:
    if (t5_dir / name).is_file():
      shutil.copy2(t5_dir / name, dest / name)
  return 'tokenizer'


def main(argv):
  del argv
  for flag in (_CHECKPOINT, _T5, _OUT):
    if not flag.value:
      raise app.UsageError(f'--{flag.name} is required')
  out = pathlib.Path(_OUT.value)
  if (out / checkpoints.PARAMS_DIR).exists():
    raise app.UsageError(f'{out} already holds a checkpoint; choose a new --out directory')
  m = _CONFIG.value.model
  try:
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
      extractor = synchformer_convert.module_from_config(m.get('synchformer'))
      params['synchformer'] = synchformer_convert.convert(
          torch_io.load_state_dict(_SYNCHFORMER.value), extractor, source=_SYNCHFORMER.value)
  except (ConversionError, FileNotFoundError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  m = m.copy_and_resolve_references()
  if _SYNCHFORMER.value:
    m.synchformer = synchformer_convert.module_config(extractor)
  if m.text.tokenizer == 'hf':
    m.text.tokenizer_dir = _copy_tokenizer(pathlib.Path(_T5.value), out)
  checkpoints.save_params(out, params, m, meta={
      'converted_from': _CHECKPOINT.value, 'network': _NETWORK.value, 'vae': _VAE.value,
      't5': _T5.value, 'clip': _CLIP.value,
      'synchformer': _SYNCHFORMER.value})
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)

r"""LoRA adapter files on the command line (axturbo/runtime/lora.py has the equations).

  python -m axturbo.lora merge --base BASE --adapter ADAPTER --out OUT

`merge` writes OUT, a full inference checkpoint: BASE's parameter tree (every subtree, e.g. a
converted release's `synchformer`) with kernel + (alpha / rank) * A @ B on each adapted kernel,
BASE's model config and tokenizer folder, and a meta.json that names BASE and ADAPTER. The
adapter must have been trained on BASE (config hash and step), else one line names both. OUT
must not exist yet.
"""
import sys

from absl import app, flags, logging

_BASE = flags.DEFINE_string('base', None, 'Base inference checkpoint the adapter was trained on.')
_ADAPTER = flags.DEFINE_string('adapter', None, 'Adapter directory (<train workdir>/adapter).')
_OUT = flags.DEFINE_string('out', None, 'New directory for the merged checkpoint.')


def merge(base_dir: str, adapter_dir: str, out_dir: str):
  """Writes the merged checkpoint; returns its path."""
  from etils import epath

  from axturbo.runtime import checkpoints, lora

  checkpoints.recover_swap(base_dir)
  if checkpoints.as_path(out_dir).exists():
    raise FileExistsError(f'--out {out_dir}: already exists; choose a new directory')
  model_config = checkpoints.load_model_config(base_dir)
  base_meta = checkpoints.load_meta(base_dir)
  if base_meta.get('kind') == lora.KIND:
    raise ValueError(f'--base {base_dir}: a LoRA adapter, not a model checkpoint')
  adapters, info = lora.load_adapter(adapter_dir)
  adapter_meta = checkpoints.load_meta(adapter_dir)
  lora.check_base(adapter_dir, info, base_dir)
  params = lora.apply_adapter_file(checkpoints.load_params(base_dir), adapter_dir, base_dir)
  tokenizer = checkpoints.as_path(base_dir) / 'tokenizer'

  def copy_tokenizer(folder: epath.Path) -> None:
    """The base's tokenizer/ folder (an 'hf' text tokenizer reads it beside the params)."""
    for f in sorted(tokenizer.rglob('*')) if tokenizer.is_dir() else ():
      target = folder / 'tokenizer' / f.relative_to(tokenizer)
      if f.is_dir():
        target.mkdir(parents=True, exist_ok=True)
      else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())

  meta = {'kind': base_meta.get('kind', 'teacher'), 'step': adapter_meta.get('step', 0),
          'config_hash': checkpoints.config_hash(model_config),
          'lora_base': lora.base_identity(base_dir),
          'lora_adapter': {'path': str(adapter_dir), 'rank': info['rank'],
                           'alpha': info['alpha'], 'targets': info.get('targets')}}
  return checkpoints.save_params(out_dir, params, model_config, meta, populate=copy_tokenizer)


def main(argv):
  if len(argv) != 2 or argv[1] != 'merge':
    sys.exit('usage: python -m axturbo.lora merge --base BASE --adapter ADAPTER --out OUT')
  missing = [f'--{f.name}' for f in (_BASE, _ADAPTER, _OUT) if not f.value]
  if missing:
    sys.exit(f'error: {", ".join(missing)} required')
  try:
    out = merge(_BASE.value, _ADAPTER.value, _OUT.value)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f'error: {e}')
  logging.info('merged %s into %s: %s', _ADAPTER.value, _BASE.value, out)


if __name__ == '__main__':
  app.run(main)

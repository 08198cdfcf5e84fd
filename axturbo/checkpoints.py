"""Inference checkpoints: a parameter tree (orbax) plus the model config it belongs to (JSON).

Layout of a checkpoint directory:
  params/             orbax StandardCheckpointer tree {'text', 'clip', 'video', ...}
  model_config.json   the `config.model` section the tree was made for
  meta.json           where it came from (converter inputs, training step, ...)
"""
import json
import pathlib
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp

PARAMS_DIR = 'params'
CONFIG_FILE = 'model_config.json'
META_FILE = 'meta.json'


def save_params(directory: str | pathlib.Path, params: Any, model_config: mlc.ConfigDict,
                meta: dict | None = None) -> pathlib.Path:
  """Writes params + config; refuses to overwrite an existing checkpoint."""
  directory = pathlib.Path(directory).absolute()
  if (directory / PARAMS_DIR).exists():
    raise FileExistsError(f'{directory}: already holds a checkpoint; choose a new directory')
  directory.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(np.asarray, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / PARAMS_DIR, params)
    ckptr.wait_until_finished()
  (directory / CONFIG_FILE).write_text(model_config.to_json(indent=2))
  (directory / META_FILE).write_text(json.dumps(meta or {}, indent=2, default=str))
  return directory


def load_model_config(directory: str | pathlib.Path) -> mlc.ConfigDict:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{directory}: not an axturbo checkpoint (no {CONFIG_FILE})')
  return mlc.ConfigDict(json.loads(path.read_text()))


def load_params(directory: str | pathlib.Path, target: Any | None = None) -> Any:
  """Restores the parameter tree. `target`: an abstract tree (jax.ShapeDtypeStruct leaves,
  optionally with `.sharding`) to restore straight into those shapes and shardings."""
  path = pathlib.Path(directory).absolute() / PARAMS_DIR
  if not path.is_dir():
    raise FileNotFoundError(f'{directory}: not an axturbo checkpoint (no {PARAMS_DIR}/)')
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, target) if target is not None else ckptr.restore(path)

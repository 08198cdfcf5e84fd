"""Synchformer sync features from raw video frames, as the official inference path makes them.

  extractor = SyncExtractor.from_checkpoint('/ckpt/audiox_turbo')   # its `synchformer` subtree
  frames = video_io.read_frames(path, extractor.frames_for(10.0), extractor.image_size,
                                fps=extractor.fps, min_frames=2)
  feats = extractor(frames[None])                                    # (1, 240, 768)

Used by `Generator` (a video given at generation time) and by `data/prepare.py` (manifest
lines without a `sync_feature`, in batches).
"""
import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from axturbo.models import synchformer
from axturbo.runtime import checkpoints

SUBTREE = 'synchformer'


class SyncExtractor:
  """The Synchformer feature path (`Synchformer.encode_frames`) with its parameters, jitted."""
  fps = synchformer.SYNC_FPS

  def __init__(self, section: Mapping | None, params: Any, source: str = 'in-memory parameters'):
    """section: the checkpoint config's `synchformer` sizes (None = the released ones)."""
    self.model = synchformer.from_config(section)
    self.params = jax.tree.map(jnp.asarray, nn.unbox(params))
    self.source = source
    self._encode = jax.jit(lambda p, f: self.model.apply({'params': p}, f,
                                                         method='encode_frames'))

  @classmethod
  def from_checkpoint(cls, directory: str | pathlib.Path) -> 'SyncExtractor':
    """The extractor an axturbo checkpoint carries (`python -m axturbo.convert --synchformer`);
    ValueError naming the checkpoint when it has none."""
    section = checkpoints.load_model_config(directory).get(SUBTREE)
    if SUBTREE not in checkpoints.subtree_names(directory):
      raise ValueError(f'{directory}: no Synchformer in this checkpoint (convert one with '
                       'python -m axturbo.convert --synchformer)')
    params = checkpoints.load_subtrees(directory, [SUBTREE])[SUBTREE]
    return cls(section, params, source=str(directory))

  @property
  def image_size(self) -> int:
    return self.model.image_size

  @staticmethod
  def frames_for(seconds: float) -> int:
    """Frames read at `fps` (25) for `seconds` of video (10 s -> 250)."""
    return synchformer.num_sync_frames(seconds)

  def check_size(self, seconds: float, sync_len: int, sync_dim: int) -> None:
    """ValueError unless `seconds` of video give (sync_len, sync_dim) features."""
    made = (synchformer.sync_len(self.model, seconds), self.model.embed_dim)
    if made != (sync_len, sync_dim):
      raise ValueError(f'{self.source}: the Synchformer makes {made} features for {seconds:g} s '
                       f'of video, but model.video wants ({sync_len}, {sync_dim})')

  def __call__(self, frames) -> np.ndarray:
    """[0, 255] frames (B, F, H, W, 3) at `fps` -> float32 features (B, sync_len, D)."""
    return np.asarray(self._encode(self.params, jnp.asarray(frames)), np.float32)

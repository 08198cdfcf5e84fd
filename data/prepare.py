r"""Builds a TFDS dataset (ArrayRecord files) from config.data's source, for data.source='tfds'.

  python -m data.prepare --config configs/official.py --name vggsound --data_dir /data/tfds \
      --config.data.manifest=/data/train.jsonl --config.data.heldout_manifest=/data/test.jsonl \
      --workers 8
  python train.py --config configs/official.py --config.data.source=tfds \
      --config.data.tfds_name=axturbo_manifest/vggsound --config.data.tfds_data_dir=/data/tfds

The source is config.data.source: 'manifest' (a .jsonl manifest, or a folder of audio files
with .txt captions) or 'embedded'. The dataset is `<builder>/<name>` (axturbo_manifest,
axturbo_folder or axturbo_events: `axturbo.data.tfds_builders`) at config.model's rate and
shapes, with a train split and, where the config names one, a heldout split. --name defaults
to the part after '/' of config.data.tfds_name, --data_dir to config.data.tfds_data_dir.
Files that fail to decode are skipped and counted in the dataset's metadata
(--config.data.fail_fast=true stops at the first). A progress bar per split on stderr.

Video lines without a "sync_feature" get zero sync features, as the official pipeline reads
them, unless --sync_checkpoint names an axturbo checkpoint that carries a Synchformer
(`python -m axturbo.convert --synchformer ...`): it then computes them from the video (25 fps
frames of the crop's window), --sync_batch videos at a time. The checkpoint is one of the
dataset's settings: a dataset built without it is not reused for a build with it.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from axturbo.runtime import launch

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).')
_NAME = flags.DEFINE_string('name', None, 'Builder config name (default: from data.tfds_name).')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                "TFDS data_dir (default: data.tfds_data_dir, else TFDS's).")
_WORKERS = flags.DEFINE_integer('workers', 0, 'Decoding processes (0 = this process).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild a dataset that is already built.')
_SYNC_CHECKPOINT = flags.DEFINE_string(
    'sync_checkpoint', '', 'axturbo checkpoint with a Synchformer: computes the sync features of '
    'video lines without a "sync_feature" (default: zeros).')
_SYNC_BATCH = flags.DEFINE_integer('sync_batch', 8, 'Videos per Synchformer call.')


def dataset_name(tfds_name: str, name: str | None) -> str:
  """`name`, else the config part of `tfds_name` ('axturbo_events/tiny:1.0.0' -> 'tiny')."""
  if name:
    return name
  config_name = tfds_name.partition('/')[2].partition(':')[0]
  if not config_name:
    raise ValueError(f'--name is required: config.data.tfds_name={tfds_name!r} names no '
                     'builder config')
  return config_name


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {argv[1:]}')
  import tensorflow_datasets as tfds
  from axturbo.data import tfds_builders
  d = _CONFIG.value.data
  tfds.disable_progress_bar()  # ours counts against the split's size and shows the skips
  if _SYNC_BATCH.value < 1:
    sys.exit(f'error: --sync_batch must be >= 1, got {_SYNC_BATCH.value}')
  try:
    extractor = None
    if _SYNC_CHECKPOINT.value:
      from axturbo.generation import sync
      m = _CONFIG.value.model
      extractor = sync.SyncExtractor.from_checkpoint(os.path.abspath(_SYNC_CHECKPOINT.value))
      extractor.check_size(m.video.num_frames / m.video_fps, m.video.sync_len, m.video.sync_dim)
    builder = tfds_builders.build(
        _CONFIG.value, dataset_name(d.tfds_name, _NAME.value),
        d.tfds_data_dir if _DATA_DIR.value is None else _DATA_DIR.value,
        overwrite=_OVERWRITE.value, workers=_WORKERS.value, fail_fast=bool(d.fail_fast),
        progress=True, sync_extractor=extractor, sync_batch=_SYNC_BATCH.value)
  except (ValueError, OSError) as e:
    sys.exit(f'error: {e}')
  print(tfds_builders.summary(builder))


if __name__ == '__main__':
  app.run(main, flags_parser=launch.parse_flags)

r"""Writes the embedded procedural dataset to disk in the official manifest format.

Usage (from the repository root):
  python -m data.build_embedded --out /tmp/emb --split train --num_clips 64 \
      --sample_rate 16000 --duration 4

Layout under --out: audio/<split>_<i>.wav, video/<split>_<i>.npy ((F, H, W, 3)
uint8) and <split>_manifest.jsonl. Each manifest line has the official keys
(path, video_path, sync_feature, duration, caption={"audio_caption": {"0-<dur>":
caption}}, sample_rate, type) plus category, SED, time_relation, captions,
caption_style, seed, split, inpaint_span_s and continuation_s. Paths are
os.path.join(--out, ...), i.e. relative to the working directory when --out is.
"""
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np
import soundfile

from axturbo.data import embedded  
_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)
_SPLIT = flags.DEFINE_enum('split', 'train', list(embedded.SPLITS), 'Dataset split.')
_NUM_CLIPS = flags.DEFINE_integer('num_clips', 16, 'Number of clips.')
_SAMPLE_RATE = flags.DEFINE_integer('sample_rate', 16000, 'Audio sample rate (Hz).')
_DURATION = flags.DEFINE_float('duration', 4.0, 'Clip duration (s), multiple of 0.1.')
_FPS = flags.DEFINE_integer('fps', 5, 'Video frame rate.')
_VIDEO_SIZE = flags.DEFINE_integer('video_size', 32, 'Video frame height and width.')
_SEED_OFFSET = flags.DEFINE_integer('seed_offset', 0, 'Seed of clip 0.')
_CAPTION_STYLE = flags.DEFINE_enum(
    'caption_style', None, list(embedded.CAPTION_STYLES), 'Fixed caption style.')
_TYPE = flags.DEFINE_string('type', 'text_condition-audio', 'Manifest "type" field.')
_SUBTYPE = flags.DEFINE_string('wav_subtype', 'FLOAT', 'soundfile WAV subtype.')


def _number(x):
  return int(x) if float(x).is_integer() else float(x)


def manifest_entry(clip, audio_path, video_path, task_type):
  """One manifest record (JSON-serialisable dict) for a make_clip() result."""
  dur = _number(clip['duration_s'])
  ann = clip['annotations']
  return {
      'path': audio_path,
      'video_path': video_path,
      'sync_feature': None,
      'duration': dur,
      'caption': {'audio_caption': {f'0-{dur}': clip['caption']}},
      'sample_rate': clip['sample_rate'],
      'type': task_type,
      'category': ann['category'],
      'SED': ann['SED'],
      'time_relation': ann['time_relation'],
      'captions': clip['captions'],
      'caption_style': clip['caption_style'],
      'seed': clip['seed'],
      'split': clip['split'],
      'inpaint_span_s': [float(t) for t in clip['inpaint_span_s']],
      'continuation_s': clip['continuation_s'],
  }


def write_dataset(out, split, num_clips, sample_rate, duration_s, fps=5, video_size=32,
                  seed_offset=0, caption_style=None, task_type='text_condition-audio',
                  wav_subtype='FLOAT'):
  """Writes WAVs, videos and the manifest; returns the manifest path."""
  data = embedded.EmbeddedDataset(split, num_clips, sample_rate, duration_s,
                                  seed_offset=seed_offset, fps=fps,
                                  video_size=video_size, caption_style=caption_style)
  for sub in ('audio', 'video'):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
  manifest = os.path.join(out, f'{split}_manifest.jsonl')
  with open(manifest, 'w') as f:
    for i, clip in enumerate(data):
      name = f'{split}_{seed_offset + i:06d}'
      audio_path = os.path.join(out, 'audio', name + '.wav')
      video_path = os.path.join(out, 'video', name + '.npy')
      soundfile.write(audio_path, clip['waveform'], sample_rate, subtype=wav_subtype)
      np.save(video_path, clip['video'])
      f.write(json.dumps(manifest_entry(clip, audio_path, video_path, task_type)) + '\n')
      print(f'\r[{i + 1}/{num_clips}] {split} clips written to {out}', end='',
            file=sys.stderr, flush=True)
  print(file=sys.stderr)
  return manifest


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {argv[1:]}')
  path = write_dataset(_OUT.value, _SPLIT.value, _NUM_CLIPS.value, _SAMPLE_RATE.value,
                       _DURATION.value, _FPS.value, _VIDEO_SIZE.value, _SEED_OFFSET.value,
                       _CAPTION_STYLE.value, _TYPE.value, _SUBTYPE.value)
  print(f'manifest: {path}')


if __name__ == '__main__':
  app.run(main)

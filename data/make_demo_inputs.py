r"""Writes demo inputs for every generation task from the embedded held-out split.

  python -m data.make_demo_inputs --config configs/tiny.py --out out/inputs

Writes clip.wav (a held-out clip at the model rate), start.wav (its first half), clip.mp4 (its
synthetic video), frame.png (a frame showing an event) and tasks.jsonl: one line per task
(text-to-audio, text-to-music, video-to-audio, video-to-music, text+video, inpainting,
continuation, image-to-audio) for `sample.py --batch_file`.
"""
import json
import pathlib

from absl import app, flags
from ml_collections import config_flags


_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Model config.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.')
_SEED = flags.DEFINE_integer('seed', 0, 'Held-out clip index.')


def main(argv):
  del argv
  import numpy as np
  from PIL import Image

  from axturbo.generation import media
  from axturbo.data import embedded

  m = _CONFIG.value.model
  out = pathlib.Path(_OUT.value or 'out/inputs')
  out.mkdir(parents=True, exist_ok=True)
  duration = round(m.audio_samples / m.sample_rate, 1)
  clip = embedded.make_clip(_SEED.value, split='heldout', sample_rate=m.sample_rate,
                            duration_s=duration, fps=m.video_fps, video_size=m.clip.image_size)
  wave = clip['waveform']
  media.write_wav(out / 'clip.wav', wave, m.sample_rate)
  media.write_wav(out / 'start.wav', wave[:len(wave) // 2], m.sample_rate)
  media.write_video(out / 'clip.mp4', clip['video'], m.video_fps)
  lit = int(np.argmax(clip['video'].reshape(len(clip['video']), -1).max(axis=1)))
  Image.fromarray(clip['video'][lit]).save(out / 'frame.png')
  start, end = clip['inpaint_span_s']
  caption = clip['caption']
  tasks = [
      ('text-to-audio', {'text': caption}),
      ('text-to-music', {'text': 'A bell melody, then a soft tone.'}),
      ('video-to-audio', {'video': str(out / 'clip.mp4')}),
      ('video-to-music', {'video': str(out / 'clip.mp4'), 'text': 'Generate music for the video'}),
      ('text+video', {'video': str(out / 'clip.mp4'), 'text': caption}),
      ('inpainting', {'audio': str(out / 'clip.wav'), 'inpaint': f'{start}:{end}',
                      'text': caption}),
      ('continuation', {'audio': str(out / 'start.wav'), 'continuation': True, 'text': caption}),
      ('image-to-audio', {'image': str(out / 'frame.png')}),
  ]
  with open(out / 'tasks.jsonl', 'w') as f:
    for _, job in tasks:
      f.write(json.dumps(job) + '\n')
  (out / 'tasks.txt').write_text(''.join(f'{i:04d} {name}\n' for i, (name, _) in enumerate(tasks)))
  print(f'wrote {len(tasks)} tasks to {out / "tasks.jsonl"} (caption: {caption!r})')


if __name__ == '__main__':
  app.run(main)

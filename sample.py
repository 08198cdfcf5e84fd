r"""Generate audio with an axturbo checkpoint (student: 4 steps, no CFG; teacher: Euler + CFG).

Tasks (any combination of text, video/image and audio conditions):
  text-to-audio     --prompt "a dog barks in the rain"
  text-to-music     --prompt "calm piano with soft strings"
  video-to-audio    --video clip.mp4 --prompt "Generate general audio for the video"
  video-to-music    --video clip.mp4 --prompt "Generate music for the video"
  text+video        --video clip.mp4 --prompt "footsteps on gravel"
  inpainting        --audio in.wav --inpaint 2.0:4.5 [--keep_unmasked] --prompt "a door slams"
                    (the span is zeroed in the audio prompt and regenerated; --keep_unmasked
                    also pins the latents outside the span so that region is kept exactly)
  continuation      --audio start.wav --continue --prompt "jazz trio"
                    (the audio is the beginning; the output is the whole clip)
  image-to-audio    --image photo.png --prompt "Generate audio for the image"
Many prompts: --batch_file prompts.txt (one prompt per line, or JSON objects with keys text,
video, audio, image, sync, inpaint, continuation), generated --batch_size at a time.

Video is read at model.video_fps and squashed to the CLIP size. Synchformer features come from
--sync, else <video stem>.sync.npy beside the video, else the checkpoint's own Synchformer (a
checkpoint converted with --synchformer: the video is read again at 25 fps), else zeros (with a
warning; --no_sync asks for zeros). Missing conditions take the
official defaults (empty text, empty video, silent audio prompt).

Writes to --out (never overwriting: a second run into the same folder numbers its files after
the first run's, and runs writing at the same time never share a number; each file appears whole
or not at all), per prompt: NNNN_<prompt>.wav (model sample rate, peak-normalized), .mp4 (the
input video with the new audio, when a video was given), .png (spectrogram) and .json
(inputs, seed, steps, NFE, per-stage latency, real-time factor).

Long clips: --duration SECONDS makes clips of any length window by window on the continuation
task (axturbo/generation/longform.py): text-to-audio, video-to-audio (each window sees its own
frames) and text+video; --captions_file gives the captions over time (lines `START_S: caption`).
--overlap / --tail / --join choose the windows and how they are joined; the sidecar lists the
windows (span, caption, prompt span, seed, latency) and the seam metric at every join
(axturbo/eval/seams.py). --normalize clip peak-normalizes the whole clip, window each window.
A duration shorter than a window generates one window and trims it.

  python sample.py --checkpoint ckpt/ --prompt "thunder" --out out/ [--steps 4] [--seed 0]
  python sample.py --checkpoint ckpt/ --teacher --steps 100 --cfg 6 --prompt "..." --out out/
  python sample.py --checkpoint ckpt/ --prompt "rain on a roof" --duration 60 --out out/
  python sample.py --checkpoint base/ --lora finetune/adapter --teacher --prompt "..." --out out/
  python sample.py --checkpoint turbo/ --lora lora_student/adapter --prompt "..." --out out/
  python sample.py --checkpoint ckpt/ --captions_file captions.txt --duration 60 --out out/
"""
import dataclasses
import sys

from absl import app
from absl import flags
from absl import logging

from axturbo.runtime import compile_cache

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Checkpoint directory (axturbo format).')
_LORA = flags.DEFINE_string('lora', None, 'LoRA adapter directory (<workdir>/adapter of '
                            'train.py with train.lora, or of distill.py with distill.lora) '
                            'merged into --checkpoint, the base it was trained on, at load '
                            'time.')
_PROMPT = flags.DEFINE_string('prompt', '', 'Text prompt ("" is allowed with other conditions).')
_VIDEO = flags.DEFINE_string('video', None, 'Video file (video-to-audio / -music, text+video).')
_SYNC = flags.DEFINE_string('sync', None, 'Synchformer features (.npy / .pth) for --video.')
_NO_SYNC = flags.DEFINE_bool('no_sync', False, 'Zero Synchformer features for --video (else: '
                             "--sync, <video stem>.sync.npy, the checkpoint's Synchformer).")
_AUDIO = flags.DEFINE_string('audio', None, 'Audio prompt file (inpainting, continuation, ...).')
_IMAGE = flags.DEFINE_string('image', None, 'Still image, repeated as video frames.')
_INPAINT = flags.DEFINE_string('inpaint', None, 'START:END seconds of --audio to regenerate.')
_CONTINUE = flags.DEFINE_bool('continue', False, 'Continue --audio to the full clip length.')
_KEEP = flags.DEFINE_bool('keep_unmasked', False,
                          'Inpainting/continuation: pin the latents of the given audio.')
_STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps (student: 1, 2 or 4; default 4; '
                              'teacher: default 250).')
_TEACHER = flags.DEFINE_bool('teacher', False, 'Use the Euler + CFG sampler (teacher models).')
_CFG = flags.DEFINE_float('cfg', None, 'CFG scale for --teacher (default 6).')
_BATCH_FILE = flags.DEFINE_string('batch_file', None, 'File with one prompt per line.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4, 'Prompts generated together.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed; prompt k of a batch file uses seed + k.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_NORMALIZE = flags.DEFINE_enum('normalize', 'clip', ['clip', 'batch', 'window', 'none'],
                               'Peak normalization: per clip (a long clip: over its whole '
                               'length), per batch (official), per window (long clips), or none.')
_SPECTROGRAM = flags.DEFINE_bool('spectrogram', True, 'Write a spectrogram PNG per output.')
_UNCONDITIONAL = flags.DEFINE_bool('allow_unconditional', False,
                                   'Allow prompts with no text, video, image or audio.')
_IMAGE_QUIRK = flags.DEFINE_bool('official_image_scaling', False,
                                 'Reproduce the official double /255 of still images.')
_POSTERIOR = flags.DEFINE_bool('sample_prompt_posterior', False,
                               'Sample the audio-prompt VAE posterior (official) instead of '
                               'its mean.')
_PROMPT_PAD = flags.DEFINE_enum('prompt_pad', 'left', ['left', 'right'],
                                'Padding side of short audio prompts (official: left).')
_DURATION = flags.DEFINE_float('duration', None, 'Seconds per clip, any length: generated window '
                               'by window (default: one window).')
_CAPTIONS = flags.DEFINE_string('captions_file', None, 'Captions over time of a --duration clip: '
                                'lines "START_S: caption" (replaces --prompt).')
_OVERLAP = flags.DEFINE_float('overlap', None, 'Seconds each window shares with the previous one '
                              '(default: half a window).')
_TAIL = flags.DEFINE_float('tail', 0.0, 'Seconds at the end of each generated window left '
                           'unused (docs/results.md: 0.16 for the tiny model).')
_JOIN = flags.DEFINE_enum('join', 'latent', ['latent', 'crossfade'], 'How windows are joined: '
                          'pinned latents, one decode (latent), or an equal-power crossfade.')
_COMPILE_CACHE = compile_cache.define_flag()


def _jobs() -> list[dict]:
  from axturbo.generation import jobs
  if _BATCH_FILE.value:
    return jobs.parse_batch_file(_BATCH_FILE.value)
  return [{'text': _PROMPT.value, 'video': _VIDEO.value, 'audio': _AUDIO.value,
           'image': _IMAGE.value, 'sync': _SYNC.value,
           'inpaint': jobs.parse_span(_INPAINT.value) if _INPAINT.value else None,
           'continuation': _CONTINUE.value}]


def main(argv):
  del argv
  from axturbo.eval import seams
  from axturbo.generation import InputOptions, SamplerOptions
  from axturbo.generation import jobs
  from axturbo.generation import longform
  from axturbo.generation import media
  if not _CHECKPOINT.value or not _OUT.value:
    sys.exit('error: --checkpoint and --out are required (see --help)')
  if _BATCH_SIZE.value < 1:
    sys.exit('error: --batch_size must be >= 1')
  try:
    todo = _jobs()
    long, segments = _long_options()
    inputs = InputOptions(prompt_pad=_PROMPT_PAD.value, official_image_scaling=_IMAGE_QUIRK.value,
                          sample_prompt_posterior=_POSTERIOR.value, no_sync=_NO_SYNC.value,
                          allow_unconditional=_UNCONDITIONAL.value)
    out = jobs.writable_dir(_OUT.value)
    first = jobs.first_free_index(out)
    compile_cache.enable(_COMPILE_CACHE.value, '--compile_cache')
    gen = jobs.load_generator(_CHECKPOINT.value, lora=_LORA.value)
    if long is not None:  # here, in the flags' names; generate_long checks it again
      longform.check_duration(_DURATION.value, long.overlap_s, long.tail_s,
                              sample_rate=gen.config.sample_rate,
                              window_frames=gen.output_samples // gen.hop, hop=gen.hop,
                              names=('--duration', '--overlap', '--tail'))
    options = gen.resolve(SamplerOptions(sampler='teacher' if _TEACHER.value else None,
                                         steps=_STEPS.value, cfg_scale=_CFG.value,
                                         seed=_SEED.value))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  if first:
    logging.info('%s already holds outputs; numbering the new ones from %04d', out, first)
  logging.info('%s checkpoint, %s sampler, %d steps, cfg %.2f, %d prompt(s)', gen.kind,
               options.sampler, options.steps, options.cfg_scale, len(todo))
  bar = jobs.Progress(len(todo), unit='prompt')
  done = 0
  for start in range(0, len(todo), _BATCH_SIZE.value):
    chunk = todo[start:start + _BATCH_SIZE.value]
    chunk_options = dataclasses.replace(options, seed=_SEED.value + start)
    try:
      requests = [jobs.job_request(job, keep_unmasked=_KEEP.value,
                                   duration_s=_DURATION.value, segments=segments)
                  for job in chunk]
      if long is None:
        results = gen.generate(requests, chunk_options, inputs=inputs)
      else:
        results = longform.generate_long(gen, requests, chunk_options, long=long, inputs=inputs)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:  # incl. media.MediaError
      where = f'prompts {start}..{start + len(chunk) - 1}: ' if len(todo) > 1 else ''
      sys.exit(f'error: {where}{e}')
    for i, r in enumerate(results):
      r.meta['index'] = start + i  # position in the whole job list, not in the chunk
      if 'windows' in r.meta:
        r.meta['seams'] = seams.seam_report(r.waveform, seams.seam_positions(r.meta['windows']),
                                            r.sample_rate)
    stems = [jobs.output_stem(first + start + i, job['text'] or (segments or [(0, '')])[0][1])
             for i, job in enumerate(chunk)]
    videos = [job['video'] if job['video'] and not media.is_image_path(job['video']) else None
              for job in chunk]
    try:
      records = jobs.save_results(results, out, stems, normalize=_NORMALIZE.value,
                                  videos=videos, spectrogram=_SPECTROGRAM.value, create=False)
    except FileNotFoundError as e:  # --out removed (or unmounted) during the run
      sys.exit(f'error: --out {out} vanished during the run; nothing more was written, and the '
               f'{done} output(s) written before went with it')
    except OSError as e:  # a full disk, a read-only --out
      sys.exit(f'error: writing {e.filename or out} failed: {e.strerror or e}; no partial file '
               f'was left, and the {done} output(s) written before are kept in {out}')
    except ValueError as e:  # media.MediaError: the input video cannot be muxed
      sys.exit(f'error: {e}')
    done += len(records)
    for rec in records:
      logging.info('%s  (%.2f s audio, total %.2f s, RTF %.3f)', rec['files']['wav'],
                   rec['duration_s'], rec['latency_s']['total_s'], rec['real_time_factor'])
      if 'seams' in rec and rec['seams']['median_ratio'] is not None:
        logging.info('  %d windows; seam flux / in-window median: median %.2f, max %.2f',
                     rec['num_windows'], rec['seams']['median_ratio'], rec['seams']['max_ratio'])
    bar.update(len(chunk))
  bar.close()
  logging.info('%s', compile_cache.summary())


def _long_options():
  """(LongOptions of a long clip or None, its segments or None); ValueErrors."""
  from axturbo.generation import LongOptions
  from axturbo.generation import jobs
  from axturbo.generation.request import check_segments, seconds
  if _CAPTIONS.value and (_PROMPT.value or _BATCH_FILE.value):
    raise ValueError('--captions_file gives the captions; leave out --prompt and --batch_file')
  if _DURATION.value is None:
    for name, flag in (('captions_file', _CAPTIONS), ('overlap', _OVERLAP), ('tail', _TAIL),
                       ('join', _JOIN)):
      if flags.FLAGS[flag.name].present:
        raise ValueError(f'--{name} applies to long clips; give --duration too')
    if _NORMALIZE.value == 'window':
      raise ValueError('--normalize window applies to long clips; give --duration too')
    return None, None
  seconds(_DURATION.value, '--duration')
  if _INPAINT.value:
    raise ValueError('--inpaint edits one window; give it without --duration')
  if _AUDIO.value and not _CONTINUE.value:
    raise ValueError('--audio with --duration is the beginning of the clip: give --continue too')
  segments = jobs.parse_captions_file(_CAPTIONS.value) if _CAPTIONS.value else None
  if segments is not None:
    try:
      segments = check_segments(segments, _DURATION.value)
    except ValueError as e:
      raise ValueError(f'--captions_file {_CAPTIONS.value}: {e}') from None
  for name, flag in (('overlap', _OVERLAP), ('tail', _TAIL)):
    if flag.value is not None:
      seconds(flag.value, f'--{name}')
  return LongOptions(overlap_s=_OVERLAP.value, tail_s=_TAIL.value, join=_JOIN.value), segments


def _dashes_to_underscores(argv: list[str]) -> list[str]:
  """Accept --batch-file / --keep-unmasked spellings for the underscore flags."""
  out = []
  for a in argv:
    if a.startswith('--') and '-' in a[2:].split('=')[0]:
      name, sep, value = a[2:].partition('=')
      a = '--' + name.replace('-', '_') + sep + value
    out.append(a)
  return out


if __name__ == '__main__':
  app.run(main, argv=_dashes_to_underscores(sys.argv))

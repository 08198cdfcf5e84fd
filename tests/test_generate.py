"""Every generation task on a tiny random checkpoint (configs/tiny.py), and clear input errors."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from axturbo.generation import generate
from axturbo.generation import InputOptions, Request, SamplerOptions
from axturbo.generation import media
from axturbo.runtime import checkpoints
from configs import tiny
from tests import media_files


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('inputs')
  m = tiny.model_config()
  video = media_files.write_mp4(d / 'clip.mp4')
  np.save(media.sync_path_for(video),
          np.random.default_rng(0).standard_normal((m.video.sync_len, m.video.sync_dim)))
  return {
      'video': video,
      'image': media_files.write_png(d / 'im.png'),
      'audio': media_files.write_wav(d / 'full.wav', media_files.tone(2.048, 16000), 16000),
      'mono_short': media_files.write_wav(d / 'short.wav',
                                          media_files.tone(0.5, 8000, 330.0, channels=1), 8000),
      'long': media_files.write_wav(d / 'long.wav', media_files.tone(3.0, 16000), 16000),
      'bad_video': _write(d / 'bad.mp4', 'not a video'),
      'bad_image': _write(d / 'bad.png', 'not an image'),
  }


def _write(path, text):
  path.write_text(text)
  return path


@pytest.fixture(scope='module')
def gen(tiny_checkpoint):
  return generate.Generator.load(tiny_checkpoint)


def test_load_reads_kind_and_tokenizer(gen):
  assert gen.kind == 'student'
  assert gen.tokenizer.max_length == tiny.model_config().text.max_length
  assert gen.output_samples == 32768


@pytest.mark.slow
def test_text_to_audio_shapes_determinism_and_per_prompt_seeds(gen):
  m = gen.config
  pair = [Request(text='a dog barks'), Request(text='rain on a roof')]
  a = gen.generate(pair, SamplerOptions(seed=3))
  b = gen.generate(pair, SamplerOptions(seed=3))
  assert len(a) == 2
  for r in a:
    assert r.waveform.shape == (gen.output_samples, 2) and r.waveform.dtype == np.float32
    assert r.latents.shape == (m.trunk.seq_len, m.trunk.io_channels)
    assert np.isfinite(r.waveform).all() and r.sample_rate == 16000
  np.testing.assert_array_equal(a[0].waveform, b[0].waveform)
  assert not np.allclose(a[0].latents, a[1].latents)
  # prompt 1 of the batch used seed 3 + 1
  alone = gen.generate(Request(text='rain on a roof'), SamplerOptions(seed=4))[0]
  np.testing.assert_allclose(alone.latents, a[1].latents, rtol=1e-4, atol=1e-4)
  other = gen.generate(Request(text='rain on a roof'), SamplerOptions(seed=5))[0]
  assert not np.allclose(other.latents, alone.latents)
  meta = a[1].meta
  assert (meta['seed'], meta['steps'], meta['nfe'], meta['sampler']) == (4, 4, 4, 'student')
  assert set(meta['latency_s']) >= {'conditioning_s', 'sampling_s', 'decoding_s', 'total_s'}
  assert meta['real_time_factor'] > 0


def test_student_step_counts(gen):
  one = gen.generate(Request(text='wind'), SamplerOptions(steps=1, seed=0))[0]
  assert one.meta['nfe'] == 1 and one.waveform.shape == (gen.output_samples, 2)
  with pytest.raises(ValueError, match=r'steps in \(1, 2, 4\)'):
    gen.generate(Request(text='wind'), SamplerOptions(steps=3))
  with pytest.raises(ValueError, match='no classifier-free guidance'):
    gen.generate(Request(text='wind'), SamplerOptions(cfg_scale=6.0))


def test_video_image_and_mixed_conditioning(gen, files):
  text_only = gen.generate(Request(text='engine'), SamplerOptions(seed=1))[0]
  video = gen.generate(Request(text='engine', video=str(files['video'])), SamplerOptions(seed=1))[0]
  assert video.meta['inputs']['video'] == str(files['video'])
  assert not np.allclose(video.latents, text_only.latents)
  image = gen.generate(Request(text='engine', image=str(files['image'])), SamplerOptions(seed=1))[0]
  assert image.meta['inputs']['image'] == str(files['image'])
  assert not np.allclose(image.latents, video.latents)
  # allowed, as officially
  empty_text = gen.generate(Request(image=str(files['image'])), SamplerOptions(seed=1))[0]
  assert not np.allclose(empty_text.latents, image.latents)
  # The shortcut for "no video at all" equals running the video conditioner on zero frames.
  f, s = gen.config.video.num_frames, gen.config.clip.image_size
  zeros = np.zeros((1, f, s, s, 3), np.float32)
  sync = np.zeros((1, gen.config.video.sync_len, gen.config.video.sync_dim), np.float32)
  np.testing.assert_allclose(gen._video(gen.params, zeros, sync), gen.empty_video_tokens(1),
                             atol=1e-6)


def test_audio_prompt_silent_cache_matches_conditioner(gen):
  zeros = np.zeros((1, gen.config.prompt_samples, 2), np.float32)
  direct = gen._prompt(gen.params, zeros, rng=jax.random.PRNGKey(1), deterministic=True)
  np.testing.assert_allclose(gen.silent_prompt_tokens(), direct, atol=1e-6)


def test_inpainting_keeps_unmasked_latents(gen, files):
  m = gen.config
  out = gen.generate(Request(text='a tone', audio=str(files['audio']), inpaint=(0.5, 1.25),
                             keep_unmasked=True), SamplerOptions(seed=2))[0]
  assert out.waveform.shape == (gen.output_samples, 2)
  assert out.meta['inputs']['inpaint_s'] == [0.5, 1.25]
  given = media.load_audio(files['audio'], m.sample_rate)[:m.audio_samples].copy()
  given[8000:20000] = 0.0
  known = np.asarray(gen._encode(gen.params, given[None]))[0]
  hop = gen.hop
  frames = np.arange(m.trunk.seq_len)
  kept = (frames * hop >= 20000) | ((frames + 1) * hop <= 8000)
  np.testing.assert_array_equal(out.latents[kept], known[kept])
  assert not np.allclose(out.latents[~kept], known[~kept])
  free = gen.generate(Request(text='a tone', audio=str(files['audio']), inpaint=(0.5, 1.25)),
                      SamplerOptions(seed=2))[0]
  assert not np.allclose(free.latents[kept], known[kept])  # the official way regenerates all


def test_continuation_output_is_the_whole_clip(gen, files):
  out = gen.generate(Request(text='music', audio=str(files['mono_short']), continuation=True,
                             keep_unmasked=True), SamplerOptions(seed=0))[0]
  assert out.waveform.shape == (gen.output_samples, 2)
  given = media.load_audio(files['mono_short'], gen.config.sample_rate)
  n_kept = given.shape[0] // gen.hop
  padded = np.zeros((gen.config.audio_samples, 2), np.float32)
  padded[:given.shape[0]] = given
  known = np.asarray(gen._encode(gen.params, padded[None]))[0]
  np.testing.assert_array_equal(out.latents[:n_kept], known[:n_kept])
  with pytest.raises(ValueError, match='nothing to continue'):
    gen.generate(Request(text='music', audio=str(files['long']), continuation=True))


def test_teacher_sampler_with_cfg(gen):
  out = gen.generate(Request(text='birds'),
                     SamplerOptions(sampler='teacher', steps=2, cfg_scale=3.0, seed=0))[0]
  assert out.meta['nfe'] == 4 and out.meta['cfg_scale'] == 3.0
  assert np.isfinite(out.waveform).all()
  assert gen.resolve(SamplerOptions(sampler='teacher')) == SamplerOptions(
      sampler='teacher', steps=250, cfg_scale=6.0)


def test_samplers_step_on_the_checkpoints_time_grid(gen, tiny_checkpoint, tmp_path):
  # A checkpoint written before model.time_shift existed was trained on the unshifted axis.
  old = tmp_path / 'old'
  shutil.copytree(tiny_checkpoint, old)
  config = json.loads((old / checkpoints.CONFIG_FILE).read_text())
  del config['time_shift']
  (old / checkpoints.CONFIG_FILE).write_text(json.dumps(config))
  legacy = generate.Generator.load(old)
  assert tiny.model_config().time_shift != 1.0
  assert ((gen.config.time_shift, legacy.config.time_shift)
          == (tiny.model_config().time_shift, 1.0))
  for kw in (dict(steps=2), dict(sampler='teacher', steps=2, cfg_scale=3.0)):
    shifted, plain = (g.generate(Request(text='birds'), SamplerOptions(seed=0, **kw))[0].latents
                      for g in (gen, legacy))
    assert np.abs(shifted - plain).max() > 1e-3, kw


def test_bad_inputs_give_clear_errors(gen, files, tmp_path):
  with pytest.raises(media.MediaError, match='missing.mp4: video file does not exist'):
    gen.generate(Request(text='x', video=str(tmp_path / 'missing.mp4')))
  with pytest.raises(media.MediaError, match='bad.mp4: cannot decode video'):
    gen.generate(Request(text='x', video=str(files['bad_video'])))
  with pytest.raises(media.MediaError, match='not a readable image'):
    gen.generate(Request(text='x', image=str(files['bad_image'])))
  with pytest.raises(media.MediaError, match=r'\(F >= 1, H, W, 3\)'):
    gen.generate(Request(text='x', video=np.zeros((4, 32, 32), np.uint8)))
  with pytest.raises(ValueError, match='empty text and no video'):
    gen.generate(Request(text='   '))
  with pytest.raises(ValueError, match='inpaint span'):
    gen.generate(Request(text='x', audio=str(files['mono_short']), inpaint=(0.2, 0.9)))
  with pytest.raises(ValueError, match='needs an audio input'):
    gen.generate(Request(text='x', inpaint=(0.1, 0.2)))
  with pytest.raises(ValueError, match='video or an image, not both'):
    gen.generate(Request(text='x', video=str(files['video']), image=str(files['image'])))
  with pytest.raises(ValueError, match='no requests given'):
    gen.generate([])
  with pytest.raises(FileNotFoundError, match='not an axturbo checkpoint'):
    generate.Generator.load(tmp_path)


def test_batch_file_and_saved_outputs(gen, files, tmp_path):
  import json
  from axturbo.generation import jobs
  batch = tmp_path / 'prompts.txt'
  batch.write_text('a dog barks\n\n# skipped\n'
                   f'{{"text": "", "video": "{files["video"]}"}}\n'
                   f'{{"text": "fix", "audio": "{files["audio"]}", "inpaint": "0.5:1.0"}}\n')
  todo = jobs.parse_batch_file(batch)
  assert [j['text'] for j in todo] == ['a dog barks', '', 'fix']
  assert todo[2]['inpaint'] == (0.5, 1.0) and todo[0]['video'] is None
  bad = tmp_path / 'bad.txt'
  bad.write_text('{"text": "x", "colour": 1}\n')
  with pytest.raises(ValueError, match='unknown keys'):
    jobs.parse_batch_file(bad)
  with pytest.raises(ValueError, match='START:END'):
    jobs.parse_span('2.0-4.5')
  results = gen.generate([Request(text='a dog barks'), Request(text='rain on a roof')],
                         SamplerOptions(seed=3))  # compiled already
  results[1].waveform = results[1].waveform * 10
  stems = [jobs.output_stem(0, 'A dog barks!'), jobs.output_stem(1, '')]
  assert stems == ['0000_a-dog-barks', '0001_untitled']
  records = jobs.save_results(results, tmp_path / 'out', stems, videos=[None, files['video']],
                              normalize='batch')
  import soundfile as sf
  w0, _ = sf.read(records[0]['files']['wav'])
  w1, _ = sf.read(records[1]['files']['wav'])
  peaks = [np.abs(r.waveform).max() for r in results]  # one peak for the batch (official)
  np.testing.assert_allclose([np.abs(w0).max(), np.abs(w1).max()], np.array(peaks) / max(peaks),
                             rtol=1e-5)
  assert pathlib.Path(records[1]['files']['video']).is_file()
  side = json.loads((tmp_path / 'out' / '0000_a-dog-barks.json').read_text())
  assert side['nfe'] == 4 and side['normalize'] == 'batch' and 'sampling_s' in side['latency_s']

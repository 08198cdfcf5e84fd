"""Media readers and writers on files the tests create (PyAV mp4, soundfile wav, PIL png)."""
import json
import logging

import numpy as np
import pytest

from axturbo.generation import media
from tests import media_files
from tests import optional


@pytest.fixture(scope='module')
def mp4(tmp_path_factory):
  return media_files.write_mp4(tmp_path_factory.mktemp('video') / 'clip.mp4')


def test_read_video_takes_every_kth_frame_and_squashes(mp4):
  frames = media.read_video(mp4, fps=5, num_frames=10, image_size=32)
  assert frames.shape == (10, 32, 32, 3) and frames.dtype == np.uint8
  for j in range(10):  # 10 fps source at 5 fps: decoded frames 0, 2, 4, ...
    np.testing.assert_allclose(frames[j].reshape(-1, 3).mean(0),
                               media_files.frame_color(2 * j), atol=8)


def test_read_video_pads_with_last_frame(mp4):
  frames = media.read_video(mp4, fps=5, num_frames=20, image_size=16)
  assert frames.shape == (20, 16, 16, 3)
  for j in range(13, 20):  # 25 source frames give 13 at 5 fps
    np.testing.assert_array_equal(frames[j], frames[12])


def test_video_errors(tmp_path):
  with pytest.raises(media.MediaError, match='nope.mp4: video file does not exist'):
    media.read_video(tmp_path / 'nope.mp4', 5, 10, 32)
  bad = tmp_path / 'bad.mp4'
  bad.write_text('this is not a video')
  with pytest.raises(media.MediaError, match='bad.mp4: cannot decode video'):
    media.read_video(bad, 5, 10, 32)
  with pytest.raises(media.MediaError, match='frames must be'):
    media.fit_frames(np.zeros((4, 8, 8)), 10, 32)


def test_read_image(tmp_path):
  png = media_files.write_png(tmp_path / 'im.png')
  frames = media.read_image(png, num_frames=6, image_size=32)
  assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
  assert all(np.array_equal(f, frames[0]) for f in frames)
  assert frames[..., 0].max() == 200
  quirk = media.read_image(png, 6, 32, official_image_scaling=True)
  np.testing.assert_allclose(quirk, frames / 255.0, atol=1e-6)
  from_array = media.read_image(np.full((5, 7), 9, np.uint8), 2, 8)
  assert from_array.shape == (2, 8, 8, 3) and from_array.max() == 9


def test_image_errors(tmp_path):
  junk = tmp_path / 'junk.png'
  junk.write_bytes(b'\x00\x01 not a png')
  with pytest.raises(media.MediaError, match='not a readable image'):
    media.read_image(junk, 2, 8)
  with pytest.raises(media.MediaError, match='missing.png: image file does not exist'):
    media.read_image(tmp_path / 'missing.png', 2, 8)
  with pytest.raises(media.MediaError, match=r'\(H, W, 3\)'):
    media.read_image(np.zeros((4, 4, 5), np.uint8), 2, 8)
  with pytest.raises(media.MediaError, match=r'\[0, 255\]'):
    media.fit_frames(np.full((1, 4, 4, 3), 300.0), 2, 8)


def test_sync_features(tmp_path, mp4, caplog):
  video = tmp_path / 'v.mp4'
  video.write_bytes(mp4.read_bytes())
  with caplog.at_level(logging.WARNING):
    zeros = media.load_sync(None, 6, 4, video_path=video)
  assert not zeros.any() and zeros.shape == (6, 4) and 'using zeros' in caplog.text
  feats = np.arange(24, dtype=np.float32).reshape(1, 6, 4)
  np.save(media.sync_path_for(video), feats)
  np.testing.assert_array_equal(media.load_sync(None, 6, 4, video_path=video), feats[0])
  torch = optional.torch()
  pth = tmp_path / 's.pth'
  torch.save(torch.from_numpy(feats), pth)
  np.testing.assert_array_equal(media.load_sync(pth, 6, 4), feats[0])
  with pytest.raises(media.MediaError, match=r'expected \(6, 5\)'):
    media.load_sync(media.sync_path_for(video), 6, 5)


def test_audio_mono_resampled_and_prompt_padding(tmp_path):
  wav = media_files.write_wav(tmp_path / 'mono.wav', media_files.tone(0.5, 8000, channels=1), 8000)
  wave = media.load_audio(wav, 16000)
  assert wave.shape == (16000 // 2, 2)
  np.testing.assert_array_equal(wave[:, 0], wave[:, 1])
  prompt, offset = media.fit_prompt(wave, 10000)  # short: left-padded (official)
  assert prompt.shape == (10000, 2) and offset == 2000
  assert not prompt[:2000].any()
  np.testing.assert_array_equal(prompt[2000:], wave)
  right, offset = media.fit_prompt(wave, 10000, pad='right')
  assert offset == 0 and not right[8000:].any()
  long, offset = media.fit_prompt(wave, 3000)  # long: the first samples are kept
  np.testing.assert_array_equal(long, wave[:3000])
  surround = media.prepare_audio(np.ones((100, 6), np.float32), 16000, 16000)
  assert surround.shape == (100, 2)


def test_audio_errors(tmp_path):
  with pytest.raises(media.MediaError, match='none.wav: audio file does not exist'):
    media.load_audio(tmp_path / 'none.wav', 16000)
  text = tmp_path / 'text.wav'
  text.write_text('hello')
  with pytest.raises(media.MediaError, match='text.wav: cannot decode audio'):
    media.load_audio(text, 16000)
  empty = media_files.write_wav(tmp_path / 'empty.wav', np.zeros((0, 2), np.float32), 16000)
  with pytest.raises(media.MediaError, match='no samples'):
    media.load_audio(empty, 16000)
  with pytest.raises(media.MediaError, match='NaN'):
    media.prepare_audio(np.full((10, 2), np.nan), 16000, 16000)


def test_undecodable_audio_is_quiet_from_reader_threads(tmp_path):
  # The pipeline decodes in threads; librosa's fallback warnings reached the console after a
  # run's one-line error when each thread toggled the process-wide filters.
  import concurrent.futures
  import warnings
  from axturbo.data import audio_io
  bad = tmp_path / 'bad.wav'
  bad.write_bytes(b'RIFF' + bytes(range(256)))

  def load(_):
    with pytest.raises(audio_io.BadSampleError, match='bad.wav: cannot decode audio'):
      audio_io.load_audio(str(bad))
  with warnings.catch_warnings(record=True) as seen:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      list(pool.map(load, range(32)))
  assert not [w for w in seen if 'PySoundFile' in str(w.message)
              or 'audioread' in str(w.message)], [str(w.message) for w in seen]


def test_media_errors_are_bad_sample_errors(tmp_path):
  from axturbo.data import audio_io
  assert issubclass(media.MediaError, audio_io.BadSampleError)
  with pytest.raises(media.MediaError, match=r'sync array: sync features has 1 non-finite'):
    media.load_sync(np.array([[0.0, np.nan]]), 1, 2)


def test_resampled_length_is_the_official_ceil():
  # torchaudio (official) gives ceil(N * 16000 / 22050) = 48006 samples; soxr alone gives 48005.
  n = 22050 * 3 + 7
  wave = media.prepare_audio(media_files.tone(n / 22050, 22050), 22050, 16000)
  assert wave.shape == (-(-n * 16000 // 22050), 2) == (48006, 2)
  t = np.arange(48006) / 16000
  np.testing.assert_allclose(wave[200:-200, 0], 0.5 * np.sin(2 * np.pi * 440 * t[200:-200]),
                             atol=2e-3)


def test_normalize_peak_per_clip_and_joint():
  waves = np.stack([np.full((4, 2), 0.5), np.full((4, 2), -2.0)]).astype(np.float32)
  per = media.normalize_peak(waves)
  np.testing.assert_allclose(np.abs(per).max(axis=(1, 2)), [1.0, 1.0])
  joint = media.normalize_peak(waves, joint=True)
  np.testing.assert_allclose(joint[0], 0.25)
  np.testing.assert_allclose(joint[1], -1.0)
  assert not media.normalize_peak(np.zeros((1, 3, 2))).any()


def test_writers(tmp_path, mp4):
  import av
  import soundfile as sf
  from PIL import Image
  wave = media_files.tone(1.0, 16000)
  wav = media.write_wav(tmp_path / 'out' / 'a.wav', wave, 16000)
  back, rate = sf.read(str(wav), dtype='float32')
  assert rate == 16000
  np.testing.assert_array_equal(back, wave)
  png = media.save_spectrogram(tmp_path / 'a.png', wave, 16000, title='tone')
  with Image.open(png) as im:
    assert im.size == (800, 300)
  db = media.log_spectrogram(wave)
  peak_bin = db.mean(axis=1).argmax()
  assert abs(peak_bin * 16000 / 1024 - 440) < 20
  muxed = media.mux_video(mp4, wave, 16000, tmp_path / 'muxed.mp4')
  with av.open(str(muxed)) as c:
    assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
    assert c.streams.audio[0].rate == 16000
    n_video = sum(1 for _ in c.decode(video=0))
  assert n_video == 25
  side = media.write_sidecar(tmp_path / 'a.json', {'seed': 3, 'nfe': 4})
  assert json.loads(side.read_text()) == {'seed': 3, 'nfe': 4}


@pytest.mark.parametrize('suffix,container,codec', [
    ('.m4a', 'ipod', 'aac'), ('.aac', 'adts', 'aac'), ('.mp4', 'mp4', 'aac'),
    ('.webm', 'webm', 'libopus'),
])
def test_compressed_audio_decodes_without_an_ffmpeg_binary(tmp_path, monkeypatch, suffix,
                                                          container, codec):
  """PyAV decodes the audio of any container FFmpeg's libraries read; with no program on PATH
  (audioread, the old fallback, needs an ffmpeg binary) the tone still comes back."""
  import av
  from axturbo.data import audio_io
  rate, freq = 48000, 440.0
  t = np.arange(rate) / rate
  wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
  path = tmp_path / f'tone{suffix}'
  with av.open(str(path), 'w', format=container) as out:
    stream = out.add_stream(codec, rate=rate, layout='stereo')
    frame_size = 960
    for start in range(0, rate, frame_size):
      chunk = np.stack([wave[start:start + frame_size]] * 2)
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format='fltp',
                                         layout='stereo')
      frame.sample_rate, frame.pts = rate, start
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)
  monkeypatch.setenv('PATH', str(tmp_path / 'no-programs-here'))
  audio, sr = audio_io.load_audio(str(path))
  assert sr == rate and audio.ndim == 2 and audio.shape[1] == 2 and audio.dtype == np.float32
  assert abs(audio.shape[0] - rate) <= 2048  # encoder priming and padding
  mid = audio[rate // 4: 3 * rate // 4, 0]
  peak_hz = np.argmax(np.abs(np.fft.rfft(mid))) * rate / mid.shape[0]
  assert abs(peak_hz - freq) <= 2.0
  assert 0.4 < np.max(np.abs(mid)) < 0.6
  # A container with no audio stream: one line naming the file.
  silent = media.write_video(tmp_path / 'silent.mp4', np.zeros((3, 16, 16, 3), np.uint8), 5)
  with pytest.raises(audio_io.BadSampleError, match='silent.mp4: cannot decode audio'):
    audio_io.load_audio(str(silent))

"""The demo page (python -m axturbo.demo): its form checks, a request end to end, and the page
itself in a real browser.

The browser tests start the real command line on the tiny random checkpoint, in a subprocess
serving on 127.0.0.1, and drive the system's Chromium with Playwright (no browser download).
They skip, saying why, where Gradio, Playwright or Chromium is missing; .ci/run installs all three.
AXTURBO_DEMO_SCREENSHOT=<path.png> also saves the page with a result there (README's image).
"""
import json
import os
import re
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from axturbo.demo import app
from configs import tiny
from tests import media_files
from tests import script_runs

CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']


# ------------------------------------------------------------------------------ the form


def _form(**fields):
  return app.Form(**{'task': 'text-to-audio', **fields})


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('demo_inputs')
  return {'video': str(media_files.write_mp4(d / 'clip.mp4')),
          'image': str(media_files.write_png(d / 'im.png')),
          'audio': str(media_files.write_wav(d / 'a.wav', media_files.tone(2.048, 16000), 16000))}


def test_form_to_request_for_every_task(files):
  cases = {
      'text-to-audio': dict(caption=' a bell '),
      'text-to-music': dict(caption='calm piano'),
      'video-to-audio': dict(video=files['video']),
      'video-to-music': dict(video=files['video']),
      'text+video': dict(caption='steps', video=files['video']),
      'image-to-audio': dict(image=files['image']),
      'inpainting': dict(audio=files['audio'], inpaint=' 0.5:1 ', keep_unmasked=True),
      'continuation': dict(audio=files['audio'], caption='jazz'),
  }
  assert set(cases) == set(app.TASKS)
  for task, fields in cases.items():
    request, sampler = app.check_form(_form(task=task, **fields))
    assert request['continuation'] == (task == 'continuation'), task
    assert request['inpaint'] == ((0.5, 1.0) if task == 'inpainting' else None), task
    assert sampler == {'sampler': None, 'steps': None, 'cfg_scale': None, 'seed': 0}
  request, _ = app.check_form(_form(caption=' a bell '))
  assert request['text'] == 'a bell' and request['duration_s'] is None
  request, _ = app.check_form(_form(task='video-to-music', video=files['video']))
  assert request['text'] == 'Generate music for the video'  # the demo inputs' instruction
  request, sampler = app.check_form(_form(caption='x', duration=6.5, sampler='teacher',
                                          steps=8.0, cfg=3.0, seed=7.0))
  assert request['duration_s'] == 6.5
  assert sampler == {'sampler': 'teacher', 'steps': 8, 'cfg_scale': 3.0, 'seed': 7}


@pytest.mark.parametrize('fields, message', [
    (dict(caption='  '), 'Caption is empty: text-to-audio needs one'),
    (dict(task='video-to-audio'), 'Video is missing: video-to-audio needs one'),
    (dict(task='inpainting', audio='AUDIO'), 'Inpaint span is missing'),
    (dict(task='inpainting', audio='AUDIO', inpaint='1.0'),
     'Inpaint span: inpaint span must look like START:END'),
    (dict(task='inpainting', audio='AUDIO', inpaint='1:0.5'),
     'Inpaint span: must satisfy 0 <= start < end, got 1 to 0.5 s'),
    (dict(caption='x', video='VIDEO'), 'Video: text-to-audio does not use it'),
    (dict(task='continuation', audio='AUDIO', inpaint='1:2'),
     'Inpaint span: continuation does not use it'),
    (dict(task='video-to-audio', video='/nonexistent/v.mp4'),
     'Video: /nonexistent/v.mp4 is not a file'),
    (dict(caption='x', duration=-1.0), 'Duration: must be > 0 seconds'),
    (dict(caption='x', steps=2.5), 'Steps: must be a whole number, got 2.5'),
    (dict(caption='x', sampler='student', cfg=6.0, seed=1.0), None),  # the teacher's field
    (dict(caption='x', seed=-1.0), 'Seed: must be >= 0'),
    (dict(task='speech'), "Task: unknown task 'speech'"),
])
def test_bad_forms_name_the_field(files, fields, message):
  fields = {k: files['audio'] if v == 'AUDIO' else files['video'] if v == 'VIDEO' else v
            for k, v in fields.items()}
  if message is None:
    assert app.check_form(_form(**fields))[1]['cfg_scale'] is None
    return
  with pytest.raises(ValueError, match='^' + re.escape(message)):
    app.check_form(_form(**fields))


def test_examples_read_the_demo_inputs(tmp_path):
  subprocess.run([sys.executable, '-m', 'data.make_demo_inputs', '--config',
                  'configs/tiny.py', '--out', str(tmp_path)], check=True,
                 cwd=script_runs.REPO, env=script_runs.env(tmp_path), capture_output=True)
  rows = app.load_examples(tmp_path)
  names = [r[0] for r in rows]
  assert sorted(names) == sorted(app.TASKS)  # one example per task
  for task, caption, video, image, audio, span in rows:
    fields = dict(task=task, caption=caption, video=video, image=image, audio=audio,
                  inpaint=span)
    app.check_form(app.Form(**fields))  # every example is a valid form as it loads
  (tmp_path / 'tasks.txt').write_text('0000 text-to-audio\n')
  with pytest.raises(ValueError, match='8 tasks in tasks.jsonl but 1 names'):
    app.load_examples(tmp_path)
  with pytest.raises(FileNotFoundError, match='make_demo_inputs writes it'):
    app.load_examples(tmp_path / 'missing')


@pytest.mark.slow
def test_run_writes_every_file_of_a_video_request(tiny_checkpoint, files, tmp_path):
  import av
  import soundfile as sf
  from axturbo.generation import jobs
  demo = app.Demo(jobs.load_generator(tiny_checkpoint), tmp_path / 'out')
  request, sampler = app.check_form(_form(task='text+video', caption='steps on gravel',
                                          video=files['video']))
  record = demo.run(request, sampler)
  out = record['files']
  assert set(out) == {'wav', 'video', 'spectrogram'}
  wave, rate = sf.read(out['wav'])
  assert wave.shape == (tiny.model_config().prompt_samples, 2) and rate == 16000
  with av.open(out['video']) as f:
    assert {s.type for s in f.streams} == {'video', 'audio'}
  sidecar = json.loads(pathlib.Path(out['wav']).with_suffix('.json').read_text())
  assert sidecar['inputs'] == {'text': 'steps on gravel', 'video': files['video'],
                               'sync': 'zeros'}
  assert sidecar['includes_compilation'] and 'compiled a new shape' in app.status_line(record)
  again = demo.run(request, sampler)  # numbered after the first, never over it
  assert again['files']['wav'] != out['wav'] and pathlib.Path(out['wav']).is_file()
  assert not again['includes_compilation']
  np.testing.assert_array_equal(sf.read(again['files']['wav'])[0], wave)  # same seed


@pytest.mark.slow
def test_run_makes_a_long_clip_window_by_window(tiny_checkpoint, tmp_path):
  import soundfile as sf
  from axturbo.generation import jobs
  demo = app.Demo(jobs.load_generator(tiny_checkpoint), tmp_path / 'out')
  record = demo.run(*app.check_form(_form(caption='rain on a roof', duration=3.0)))
  wave, rate = sf.read(record['files']['wav'])
  assert wave.shape == (48000, 2) and rate == 16000
  assert record['num_windows'] == 2 and len(record['seams']['ratios']) == 1
  assert '2 windows' in app.status_line(record)


# ------------------------------------------------------------------------------ the browser


def _browser_missing() -> str | None:
  for module, extra in (('gradio', 'pip install ".[demo]"'), ('playwright', 'pip install '
                                                                              'playwright')):
    try:
      __import__(module)
    except ImportError:
      return f'needs {module} ({extra}; requirements-dev.txt installs it)'
  if not chromium():
    return 'needs a system Chromium (apt-get install chromium; .ci/run installs it)'
  return None


def chromium() -> str | None:
  return os.environ.get('AXTURBO_CHROMIUM') or shutil.which('chromium') or shutil.which(
      'chromium-browser')


browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def served(tiny_checkpoint, tmp_path_factory):
  """`python -m axturbo.demo` on the tiny checkpoint with the quickstart's demo inputs ->
  (url, inputs folder, out folder); stopped after the module."""
  if _browser_missing():
    pytest.skip(_browser_missing())
  tmp = tmp_path_factory.mktemp('demo_served')
  inputs, out = tmp / 'inputs', tmp / 'out'
  env = script_runs.env(tmp, devices=1)
  subprocess.run([sys.executable, '-m', 'data.make_demo_inputs', '--config',
                  'configs/tiny.py', '--out', str(inputs)], check=True, cwd=script_runs.REPO,
                 env=env, capture_output=True)
  port = _free_port()
  log = open(tmp / 'demo.log', 'wb')
  proc = subprocess.Popen([sys.executable, '-m', 'axturbo.demo', f'--checkpoint={tiny_checkpoint}',
                           f'--inputs={inputs}', f'--out={out}', f'--port={port}'],
                          cwd=script_runs.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{port}/'
  deadline = time.time() + 900
  try:
    while 'demo: serving' not in (tmp / 'demo.log').read_text():
      assert proc.poll() is None, (tmp / 'demo.log').read_text()[-3000:]
      assert time.time() < deadline, 'the demo did not start in 900 s'
      time.sleep(0.5)
    yield {'url': url, 'inputs': inputs, 'out': out, 'log': tmp / 'demo.log'}
  finally:
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


@pytest.fixture(scope='module')
def page(served):
  from playwright.sync_api import sync_playwright
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
    pg = b.new_page(viewport={'width': 1400, 'height': 1500})
    hosts = []
    pg.on('request', lambda r: hosts.append(r.url.split('/')[2]))
    pg.hosts = hosts
    yield pg
    b.close()


def _open(page, url):
  page.goto(url)
  page.wait_for_selector('#generate')
  page.wait_for_load_state('networkidle')  # the app has mounted: a field filled now stays


def _fill(page, element: str, text: str):
  box = page.locator(f'{element} [data-testid=textbox]')
  box.fill(text)
  box.press('Tab')
  page.wait_for_function('([el, text]) => document.querySelector(el + " [data-testid=textbox]")'
                         '.value === text', arg=[element, text])


def _choose_task(page, task):
  page.locator('#task input').click()
  page.get_by_role('option', name=task, exact=True).click()


def _generate_and_wait(page, timeout_s=600):
  """Clicks Generate and waits for a new result or error line (not the progress timer that
  precedes it) -> its text. The line before must differ from the one expected."""
  before = page.inner_text('#status')
  page.click('#generate')
  page.wait_for_function(
      'before => { const t = document.querySelector("#status").innerText;'
      ' return t !== before && /^(Error: |[0-9.]+ s of audio)/.test(t.trim()); }',
      arg=before, timeout=timeout_s * 1000)
  return page.inner_text('#status')


def _wait_file(page, element: str, name: str):
  """Waits until the file field `element` shows the file `name` (its stem and suffix are
  separate elements)."""
  page.wait_for_function(
      '([el, name]) => document.querySelector(el).innerText.replace(/\\s+/g, "").includes(name)',
      arg=[element, name], timeout=120_000)


def _fetch(page, src: str) -> bytes:
  return page.request.get(src).body()


@pytest.mark.e2e
@browser
def test_caption_gives_a_playable_audio_of_the_clip_length(page, served, tmp_path):
  import io
  import soundfile as sf
  _open(page, served['url'])
  assert 'Compiled at start for the default settings: text' in page.inner_text('#header')
  _fill(page, '#caption', 'First a bell, then a buzz.')
  status = _generate_and_wait(page)
  assert 'Error' not in status and '2.05 s of audio' in status
  audio = page.locator('#result-audio audio')
  audio.wait_for(state='attached')
  src = audio.evaluate('el => el.src')
  # Playable: the browser itself loads it and knows its duration.
  duration = page.wait_for_function(
      'el => (el.readyState >= 1 && isFinite(el.duration)) ? el.duration : null',
      arg=audio.element_handle(), timeout=60_000).json_value()
  want = tiny.model_config().prompt_samples
  assert abs(duration - want / 16000) < 0.01
  wave, rate = sf.read(io.BytesIO(_fetch(page, src)))
  assert rate == 16000 and wave.shape == (want, 2) and np.abs(wave).max() > 0
  assert page.locator('#spectrogram img').count() == 1
  assert '"First a bell, then a buzz."' in page.inner_text('#sidecar').replace('\n', '')
  sidecar = json.loads(next(served['out'].glob('*.json')).read_text())
  assert sidecar['inputs']['text'] == 'First a bell, then a buzz.'
  assert page.locator('#downloads a').count() >= 3  # wav, spectrogram, json
  assert set(page.hosts) == {served['url'].split('/')[2]}, page.hosts  # nothing else was asked
  shot = tmp_path / 'demo.png'
  page.screenshot(path=str(shot), full_page=True)
  if os.environ.get('AXTURBO_DEMO_SCREENSHOT'):
    shutil.copy(shot, os.environ['AXTURBO_DEMO_SCREENSHOT'])


@pytest.mark.e2e
@browser
def test_uploaded_video_gives_an_mp4_with_the_new_audio(page, served):
  import av
  _open(page, served['url'])
  _choose_task(page, 'video-to-audio')
  page.set_input_files('#video-in input[type=file]', str(served['inputs'] / 'clip.mp4'))
  _wait_file(page, '#video-in', 'clip.mp4')
  status = _generate_and_wait(page)
  assert 'Error' not in status, status
  video = page.locator('#result-video video')
  video.wait_for(state='attached')
  src = video.evaluate('el => el.src')
  assert src.endswith('.mp4'), src
  path = served['out'] / 'mp4.mp4'
  path.write_bytes(_fetch(page, src))
  with av.open(str(path)) as f:
    assert {s.type for s in f.streams} == {'video', 'audio'}
    assert abs(f.streams.audio[0].duration * f.streams.audio[0].time_base - 2.048) < 0.1


@pytest.mark.e2e
@browser
def test_bad_input_is_a_message_on_the_page(page, served, tmp_path):
  _open(page, served['url'])
  status = _generate_and_wait(page)  # text-to-audio with no caption
  assert status.startswith('Error: Caption is empty: text-to-audio needs one'), status
  bad = tmp_path / 'broken.mp4'
  bad.write_text('not a video')
  _choose_task(page, 'video-to-audio')
  page.set_input_files('#video-in input[type=file]', str(bad))
  _wait_file(page, '#video-in', 'broken.mp4')
  status = _generate_and_wait(page)
  assert status.startswith('Error: ') and 'broken.mp4' in status, status
  assert 'Traceback' not in page.content()
  _open(page, served['url'])
  _choose_task(page, 'inpainting')
  page.set_input_files('#audio-in input[type=file]', str(served['inputs'] / 'clip.wav'))
  _wait_file(page, '#audio-in', 'clip.wav')
  _fill(page, '#inpaint', '1.5:9')
  status = _generate_and_wait(page)
  assert status.startswith('Error: ') and 'inpaint span 1.5:9.0 s must satisfy' in status, status


@pytest.mark.e2e
@browser
def test_an_example_fills_the_form(page, served):
  _open(page, served['url'])
  page.locator('#examples').get_by_text('text+video', exact=True).click()
  _wait_file(page, '#video-in', 'clip.mp4')
  assert page.input_value('#caption [data-testid=textbox]')
  assert page.input_value('#task input') == 'text+video'


def test_command_line_names_a_missing_checkpoint(tmp_path):
  run = subprocess.run([sys.executable, '-m', 'axturbo.demo', f'--checkpoint={tmp_path / "no"}'],
                       cwd=script_runs.REPO, env=script_runs.env(tmp_path, devices=1),
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
      f'error: --checkpoint {tmp_path / "no"}: no such checkpoint folder (bash quickstart.sh '
      'writes out/quickstart/student/export; or give --checkpoint)')

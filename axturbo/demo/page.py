"""The Gradio page of the demo: the fields of every task, one queued Generate button, the result.

Imports Gradio, the optional extra (`pip install ".[demo]"`); `app.py` does the work. Every
element a test reads has an elem_id (#status, #result-audio, #result-video, #downloads, ...).
"""
import html
import logging
import os
import pathlib
import re

from axturbo.demo import app

_MARKDOWN_SPECIAL = re.compile(r'([\\`*_{}\[\]()#+\-.!|~])')


def _plain(text: str) -> str:
  """Text shown as itself in a Markdown element (paths keep their underscores)."""
  return _MARKDOWN_SPECIAL.sub(r'\\\1', html.escape(text, quote=False))


def header(demo: app.Demo, examples_note: str) -> str:
  gen, m = demo.gen, demo.gen.config
  window = gen.output_samples / m.sample_rate
  compiled = ', '.join(f'{name} ({seconds:.0f} s)' for name, seconds in demo.compiled)
  return '\n\n'.join([
      '# axturbo demo',
      f'Checkpoint `{gen.source}`: a {gen.kind}, windows of {window:.3f} s at '
      f'{m.sample_rate} Hz. A duration longer than one window is made window by window.',
      (f'Compiled at start for the default settings: {compiled}. ' if compiled else
       'Nothing was compiled at start (--precompile is empty). ')
      + 'The first request of any other shape (other steps or CFG, keep unmasked, a long '
      'clip) compiles first and takes longer; the result says when it did. Requests run one '
      'at a time; the others wait in the queue and show their place.',
      examples_note])


def gradio():
  """Gradio, imported with its usage reports and version check off (the page never phones
  home; set before the import, which reads it); an ImportError names the extra."""
  os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
  try:
    import gradio as gr  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('the demo needs Gradio: pip install ".[demo]"') from None
  return gr


def build(demo: app.Demo, examples: list[list] | None, examples_note: str):
  """-> the gr.Blocks of the page (not launched)."""
  gr = gradio()
  defaults = app.default_sampler(demo.gen)
  with gr.Blocks(title='axturbo demo') as blocks:
    gr.Markdown(header(demo, examples_note), elem_id='header')
    with gr.Row():
      with gr.Column():
        task = gr.Dropdown(list(app.TASKS), value='text-to-audio', label='Task', elem_id='task')
        caption = gr.Textbox(label='Caption', elem_id='caption', lines=2,
                             placeholder='e.g. First a bell, then a buzz.')
        with gr.Row():
          video = gr.File(label='Video', file_types=['video'], elem_id='video-in')
          image = gr.File(label='Image', file_types=['image'], elem_id='image-in')
          audio = gr.File(label='Audio', file_types=['audio'], elem_id='audio-in')
        with gr.Row():
          span = gr.Textbox(label='Inpaint span (START:END seconds)', placeholder='0.5:1.2',
                            elem_id='inpaint')
          keep = gr.Checkbox(label='Keep unmasked (pin the given audio)', elem_id='keep')
        with gr.Row():
          duration = gr.Number(label='Duration (s; 0: one window)', value=0,
                               elem_id='duration')
          sampler = gr.Dropdown(['student', 'teacher'], value=defaults['sampler'],
                                label='Sampler', elem_id='sampler')
          steps = gr.Number(label='Steps', value=defaults['steps'], precision=0,
                            elem_id='steps')
          cfg = gr.Number(label='CFG (teacher only)', value=defaults['cfg_scale'],
                          elem_id='cfg')
          seed = gr.Number(label='Seed', value=0, precision=0, elem_id='seed')
        button = gr.Button('Generate', variant='primary', elem_id='generate')
      with gr.Column():
        status = gr.Markdown('Fill the fields of a task and press Generate.', elem_id='status')
        # The browser's own player: an <audio> element whose source is the written WAV (served
        # from --out, an allowed path).
        audio_out = gr.HTML(elem_id='result-audio')
        spectrogram = gr.Image(label='Spectrogram', type='filepath', interactive=False,
                               elem_id='spectrogram')
        video_out = gr.Video(label='Video with the new audio', interactive=False,
                             elem_id='result-video')
        files = gr.File(label='Download', file_count='multiple', interactive=False,
                        elem_id='downloads')
        sidecar = gr.JSON(label='Sidecar (JSON)', elem_id='sidecar')
    form_inputs = [task, caption, video, image, audio, span, keep, duration, sampler, steps,
                   cfg, seed]
    if examples:
      gr.Examples(examples, inputs=form_inputs[:6], label='Examples (the quickstart\'s demo '
                  'inputs)', example_labels=[row[0] for row in examples], elem_id='examples')

    def generate(*fields, progress=gr.Progress()):
      try:
        request, sampler_fields = app.check_form(app.Form(*fields))
        record = demo.run(request, sampler_fields,
                          progress=lambda frac, desc: progress(frac, desc=desc))
      except (ValueError, FileNotFoundError, FloatingPointError) as e:  # incl. MediaError
        return _failure(str(e))
      except Exception as e:  # pylint: disable=broad-except
        # Never a traceback on the page: one line there, the traceback in the server's log.
        logging.exception('demo request failed')
        return _failure(f'internal error ({type(e).__name__}: {e}); the server log has the '
                        'details')
      out = record['files']
      return (_plain(app.status_line(record)), _player(out['wav']), out.get('spectrogram'),
              out.get('video'), [out[k] for k in ('wav', 'video', 'spectrogram') if k in out]
              + [out['wav'][:-len('.wav')] + '.json'], record)

    button.click(generate, inputs=form_inputs,
                 outputs=[status, audio_out, spectrogram, video_out, files, sidecar],
                 api_name='generate')
  return blocks


def _player(wav: str) -> str:
  url = html.escape('/gradio_api/file=' + str(pathlib.Path(wav).resolve()), quote=True)
  return (f'<audio controls preload="metadata" src="{url}" style="width: 100%"></audio>'
          f'<div><a href="{url}" download>{html.escape(pathlib.Path(wav).name)}</a></div>')


def _failure(message: str):
  return (f'**Error:** {_plain(message)}', None, None, None, None, None)


def launch(blocks, *, port: int, max_queue: int, allowed_paths: list[str],
           block: bool = True):
  """Serves on 127.0.0.1 only, queued one request at a time; -> the local URL."""
  blocks.queue(default_concurrency_limit=1, max_size=max_queue)
  _, url, _ = blocks.launch(server_name='127.0.0.1', server_port=port, share=False,
                            allowed_paths=allowed_paths, ssr_mode=False, mcp_server=False,
                            show_error=False, quiet=True, prevent_thread_lock=True)
  return url

r"""A small load test of the demo page: N concurrent text-to-audio requests against a running
`python -m axturbo.demo`, on localhost only, bounded in count and time.

  python -m axturbo.demo --checkpoint CKPT --port 7860 &
  python -m benchmarks.demo_load --url http://127.0.0.1:7860/ --requests 8

Each request goes through the page's queued API (`/gradio_api/call/generate`, what the Generate
button calls) with its own seed, all sent at once; the page runs them one at a time. Prints
the latency of each (send to result, queueing included), p50 / p95 and the errors, and exits 1
if any request failed or none finished within --timeout.
"""
import json
import sys
import threading
import time
import urllib.parse
import urllib.request

from absl import app
from absl import flags
import numpy as np

_URL = flags.DEFINE_string('url', 'http://127.0.0.1:7860/', 'The running demo (localhost).')
_REQUESTS = flags.DEFINE_integer('requests', 8, 'Concurrent requests (1..64).')
_CAPTION = flags.DEFINE_string('caption', 'First a bell, then a buzz.', 'Caption of each.')
_TIMEOUT = flags.DEFINE_float('timeout', 600.0, 'Seconds to wait for all of them.')


def _request(base: str, seed: int, timeout: float) -> dict:
  """One Generate call -> {'latency_s', 'error'}."""
  form = ['text-to-audio', _CAPTION.value, None, None, None, '', False, 0, 'student', 4, None,
          seed]
  start = time.perf_counter()
  try:
    post = urllib.request.Request(
        urllib.parse.urljoin(base, 'gradio_api/call/generate'),
        data=json.dumps({'data': form}).encode(), headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(post, timeout=timeout) as r:
      event_id = json.load(r)['event_id']
    stream = urllib.parse.urljoin(base, f'gradio_api/call/generate/{event_id}')
    event = None
    with urllib.request.urlopen(stream, timeout=timeout) as r:
      for raw in r:
        line = raw.decode().strip()
        if line.startswith('event:'):
          event = line.split(':', 1)[1].strip()
        elif line.startswith('data:') and event in ('complete', 'error'):
          data = json.loads(line.split(':', 1)[1]) if event == 'complete' else line
          status = data[0] if event == 'complete' else str(data)
          error = None if event == 'complete' and 'Error' not in status else status
          return {'latency_s': time.perf_counter() - start, 'error': error}
    return {'latency_s': time.perf_counter() - start, 'error': 'stream ended with no result'}
  except OSError as e:
    return {'latency_s': time.perf_counter() - start, 'error': f'{type(e).__name__}: {e}'}


def main(argv):
  del argv
  host = urllib.parse.urlparse(_URL.value).hostname
  if host not in ('127.0.0.1', 'localhost'):
    sys.exit(f'error: --url {_URL.value}: localhost only')
  if not 1 <= _REQUESTS.value <= 64:
    raise app.UsageError('--requests must be in 1..64')
  results = [None] * _REQUESTS.value

  def run(i):
    results[i] = _request(_URL.value, i, _TIMEOUT.value)

  threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(results))]
  start = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join(max(0.0, _TIMEOUT.value - (time.perf_counter() - start)))
  wall = time.perf_counter() - start
  done = [r for r in results if r is not None]
  errors = [r['error'] for r in done if r['error']] + ['timed out'] * (len(results) - len(done))
  lat = np.array([r['latency_s'] for r in done if not r['error']])
  for i, r in enumerate(results):
    print(f'request {i}: ' + ('timed out' if r is None else
                              f"{r['latency_s']:.2f} s" + (f"  ERROR {r['error']}" if r['error']
                                                          else '')))
  if len(lat):
    print(f'{len(results)} concurrent requests, {len(lat)} served, {len(errors)} errors, wall '
          f'{wall:.2f} s; latency p50 {np.percentile(lat, 50):.2f} s, p95 '
          f'{np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s')
  return 1 if errors or not len(lat) else 0


if __name__ == '__main__':
  app.run(main)

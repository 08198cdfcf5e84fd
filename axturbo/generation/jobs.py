"""Batch jobs for sample.py: reading a batch file and writing each result's files (and what the
generation and evaluation CLIs share: value parsers, a quiet checkpoint load, a progress bar).

Batch file: one prompt per line; blank lines and lines starting with '#' are skipped. A line
starting with '{' is a JSON object with any of the keys text, video, audio, image, sync,
inpaint ([start_s, end_s] or "start:end"), continuation (bool).

Captions file (the captions of one long clip over time): one segment per line,
`START: caption` with START in seconds (`0: rain`, `20 s: thunder and rain`); blank lines and
lines starting with '#' are skipped.
"""
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import sys
import tempfile
from typing import Callable, Sequence

from absl import logging

import numpy as np

from axturbo.generation import longform
from axturbo.generation import media
from axturbo.generation.request import Request

JOB_KEYS = ('text', 'video', 'audio', 'image', 'sync', 'inpaint', 'continuation')
_SEGMENT = re.compile(r'^([-+0-9.eE]+)\s*s?\s*:\s*(.*)$')


def load_generator(path, kind: str | None = None, lora: str | None = None):
  """`Generator.load` without orbax's INFO line for every restore step."""
  from axturbo.generation import generate
  # The absl logger's own level, not get/set_verbosity: before flags are parsed the logger is
  # NOTSET (INFO goes through) while get_verbosity() says WARNING, so restoring the verbosity
  # would silence every INFO line of the process afterwards.
  logger = logging.get_absl_logger()
  level = logger.level
  logger.setLevel(logging.converter.absl_to_standard(logging.WARNING))
  try:
    return generate.Generator.load(path, kind=kind, lora=lora)
  finally:
    logger.setLevel(level)


class Progress:
  """tqdm when available (hidden for a single item), else a log line every ~10%."""

  def __init__(self, total: int, desc: str = '', unit: str = 'clip'):
    try:
      from tqdm import tqdm
      self._bar = tqdm(total=total, desc=desc or None, unit=unit, disable=total <= 1)
    except ImportError:
      self._bar = None
    self.total, self.done, self.desc, self._next = total, 0, desc, 0

  def update(self, n: int):
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
    elif self.done >= self._next:
      print(f'{self.desc}: {self.done}/{self.total}', file=sys.stderr, flush=True)
      self._next = self.done + max(1, self.total // 10)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def parse_span(text: str) -> tuple[float, float]:
  """'2.0:4.5' -> (2.0, 4.5)."""
  try:
    start, end = (float(x) for x in str(text).split(':'))
  except ValueError:
    raise ValueError(f'inpaint span must look like START:END in seconds (e.g. 2.0:4.5), '
                     f'got {text!r}') from None
  return start, end


def parse_step_counts(values: Sequence[str], flag: str) -> list[int]:
  """['4', '25'] (a list flag) -> [4, 25]; a ValueError naming `--flag` otherwise."""
  try:
    steps = [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--{flag} must be a comma-separated list of integers, got {values}'
                     ) from None
  if not steps or min(steps) < 1:
    raise ValueError(f'--{flag} needs step counts >= 1, got {values}')
  return steps


def _read_text(path: pathlib.Path, what: str) -> str:
  """UTF-8 text of `path`; a ValueError naming the file and the first bad byte otherwise."""
  try:
    return path.read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{what} {str(path)!r}: not UTF-8 text (byte {e.object[e.start]:#04x} at '
                     f'offset {e.start}); save it as UTF-8') from None


def parse_batch_file(path) -> list[dict]:
  """-> one dict per prompt with every key of JOB_KEYS (missing ones None/False/'')."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'batch file {str(path)!r}: file not found')
  jobs = []
  for n, line in enumerate(_read_text(path, 'batch file').splitlines(), 1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    if line.startswith('{'):
      try:
        job = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{n}: invalid JSON ({e.msg})') from None
      unknown = set(job) - set(JOB_KEYS)
      if unknown:
        raise ValueError(f'{path}:{n}: unknown keys {sorted(unknown)}; allowed: {JOB_KEYS}')
    else:
      job = {'text': line}
    job = {'text': '', 'continuation': False, **{k: None for k in JOB_KEYS[1:6]}, **job}
    if isinstance(job['inpaint'], str):
      job['inpaint'] = parse_span(job['inpaint'])
    jobs.append(job)
  if not jobs:
    raise ValueError(f'batch file {str(path)!r}: no prompts')
  return jobs


def job_request(job: dict, *, keep_unmasked: bool = False, duration_s: float | None = None,
                segments=None) -> Request:
  """A batch-file job (`parse_batch_file`) -> a `Request`; keep_unmasked applies to the jobs
  that inpaint or continue, `duration_s` / `segments` make it a long clip (segments replace the
  job's text). What a long clip cannot take is named as a batch line names it, and the
  duration as sample.py's flag."""
  edit = job.get('inpaint') is not None or bool(job.get('continuation'))
  if duration_s is not None and job.get('inpaint') is not None:
    raise ValueError('"inpaint" edits one window; give it without --duration')
  if duration_s is not None and job.get('audio') and not job.get('continuation'):
    raise ValueError('"audio" with --duration is the beginning of the clip: give '
                     '"continuation": true too')
  return Request(text='' if segments is not None else job.get('text') or '',
                 video=job.get('video'), sync=job.get('sync'), audio=job.get('audio'),
                 image=job.get('image'), inpaint=job.get('inpaint'),
                 continuation=bool(job.get('continuation')), keep_unmasked=keep_unmasked and edit,
                 duration_s=duration_s, segments=segments)


def parse_captions_file(path) -> list[tuple[float, str]]:
  """-> [(start_s, caption), ...] in file order (`longform.check_segments` checks the order)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'captions file {str(path)!r}: file not found')
  segments = []
  for n, line in enumerate(_read_text(path, 'captions file').splitlines(), 1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    match = _SEGMENT.match(line)
    try:
      segments.append((float(match.group(1)), match.group(2).strip()))
    except (AttributeError, ValueError):
      raise ValueError(f'{path}:{n}: expected "START_S: caption" (e.g. "20: thunder and rain"), '
                       f'got {line[:60]!r}') from None
  if not segments:
    raise ValueError(f'captions file {str(path)!r}: no segments')
  return segments


def writable_dir(path, flag: str = '--out') -> pathlib.Path:
  """Creates `path` if needed and proves it writable, before any model work: a bad --out fails
  in a second, not after generation."""
  out = pathlib.Path(path)
  if out.exists() and not out.is_dir():
    raise ValueError(f'{flag} {out}: exists and is not a directory')
  try:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out, prefix='.write-test-'):
      pass
  except OSError as e:
    raise ValueError(f'{flag} {out}: cannot write there ({e.strerror or e})') from None
  return out


_STEM = re.compile(r'^(\d{4,})_')
CLAIM_LOCK = '.axturbo-outputs.lock'


def first_free_index(out_dir) -> int:
  """1 + the largest NNNN_ number among the files in `out_dir` (0 if none): a second run into
  the same --out numbers its outputs after the first run's instead of overwriting them."""
  numbers = [int(m.group(1)) for f in pathlib.Path(out_dir).iterdir()
             if (m := _STEM.match(f.name))]
  return max(numbers, default=-1) + 1


def output_stem(index: int, text: str) -> str:
  """'0007_a-dog-barks': index plus a filename-safe slug of the prompt."""
  slug = re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')[:40]
  return f'{index:04d}_{slug or "untitled"}'


@contextlib.contextmanager
def _claim_lock(out_dir: pathlib.Path):
  """An exclusive lock on `out_dir` for choosing output numbers (released when the process
  dies). Where the file system has no locks, the no-overwrite links below still hold."""
  with open(out_dir / CLAIM_LOCK, 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
    yield


def _publish(tmp: pathlib.Path, final: pathlib.Path) -> None:
  """Moves `tmp` to `final`, refusing (FileExistsError) when `final` exists: a hard link where
  the file system has them (atomic), else an exclusive create and a rename over it."""
  try:
    os.link(tmp, final)
  except FileExistsError:
    raise
  except OSError:  # no hard links (some FUSE mounts): claim the name, then fill it atomically
    os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    os.replace(tmp, final)
    return
  tmp.unlink()


def claim_files(out_dir, stem: str, contents: Callable[[str], dict[str, bytes]], *,
                create: bool = True) -> dict[str, pathlib.Path]:
  """Writes the files `contents(stem)` ({suffix: bytes}) as `out_dir/<stem><suffix>` under a
  number no other file in `out_dir` has, and returns {suffix: path}.

  `stem` ('NNNN_slug') keeps its number when no file in `out_dir` starts with it, else takes
  `first_free_index`: concurrent runs into one folder never share a number or a name, and
  nothing is overwritten. Files are written into a hidden folder first and linked into place
  under an exclusive lock, so a failure (a full disk) leaves no 0-byte or partial output; the
  OSError names the path. `create` False: a missing `out_dir` is a FileNotFoundError, not made
  again (a folder that vanished during a run took that run's earlier outputs with it).
  """
  out_dir = pathlib.Path(out_dir)
  if create:
    out_dir.mkdir(parents=True, exist_ok=True)
  elif not out_dir.is_dir():
    raise FileNotFoundError(errno.ENOENT, 'the folder is gone', str(out_dir))
  index, slug = stem.split('_', 1)
  index = int(index)
  with _claim_lock(out_dir):
    taken = {int(m.group(1)) for f in out_dir.iterdir() if (m := _STEM.match(f.name))}
    if index in taken:
      index = max(taken) + 1
    while True:
      stem = f'{index:04d}_{slug}'
      data = contents(stem)
      published = []
      with tempfile.TemporaryDirectory(dir=out_dir, prefix='.claim-') as tmp:
        try:
          for suffix, blob in data.items():
            staged = pathlib.Path(tmp) / f'{stem}{suffix}'
            try:
              staged.write_bytes(blob)
            except OSError as e:
              raise OSError(e.errno, e.strerror, str(out_dir / staged.name)) from None
          for suffix in data:
            final = out_dir / f'{stem}{suffix}'
            _publish(pathlib.Path(tmp) / final.name, final)
            published.append(final)
        except FileExistsError:  # a writer that does not take the lock got there first
          for f in published:
            f.unlink(missing_ok=True)
          index += 1
          continue
        except BaseException:
          for f in published:
            f.unlink(missing_ok=True)
          raise
      return {suffix: out_dir / f'{stem}{suffix}' for suffix in data}


def save_results(results: Sequence, out_dir, stems: Sequence[str], *, normalize: str = 'clip',
                 videos: Sequence | None = None, spectrogram: bool = True,
                 create: bool = True) -> list[dict]:
  """Writes <stem>.wav (+ .mp4 when a video file was given, .png, .json) per result.

  normalize: 'clip' (peak per clip, default; a long clip's peak over its whole length),
  'batch' (one peak for all results, official), 'window' (a long clip's windows each to their
  own peak, `longform.normalize_per_window`) or 'none' (only clamped to [-1, 1]); `create` as
  in `claim_files`. Returns the sidecar records.
  """
  if normalize not in ('clip', 'batch', 'window', 'none'):
    raise ValueError(f"normalize must be 'clip', 'batch', 'window' or 'none', got {normalize!r}")
  if normalize == 'window' and not all('windows' in r.meta for r in results):
    raise ValueError("normalize 'window' applies to long clips (generated with a duration)")
  out_dir = pathlib.Path(out_dir)
  waves = np.stack([r.waveform for r in results])
  if normalize == 'none':
    waves = np.clip(waves, -1.0, 1.0)
  elif normalize == 'window':
    waves = np.stack([longform.normalize_per_window(
        r.waveform, longform.windows_from_records(r.meta['windows'])) for r in results])
  else:
    waves = media.normalize_peak(waves, joint=normalize == 'batch')
  videos = list(videos) if videos is not None else [None] * len(results)
  records = []
  for r, wave, stem, video in zip(results, waves, stems, videos):
    # Encoded before the claim: the lock is held only for writing finished bytes.
    blobs = {'.wav': media.wav_bytes(wave, r.sample_rate)}
    if video is not None and not media.is_image_path(video):
      blobs['.mp4'] = media.muxed_bytes(video, wave, r.sample_rate)
    if spectrogram:
      blobs['.png'] = media.spectrogram_png(wave, r.sample_rate,
                                            title=r.meta['inputs'].get('text', ''))
    names = {'.wav': 'wav', '.mp4': 'video', '.png': 'spectrogram'}
    record = {}

    def contents(final_stem, blobs=blobs, r=r):
      files = {names[s]: str(out_dir / f'{final_stem}{s}') for s in blobs}
      record.clear()
      record.update({**r.meta, 'normalize': normalize, 'files': files})
      return {**blobs, '.json': media.sidecar_bytes(record)}
    claim_files(out_dir, stem, contents, create=create)
    records.append(record)
  return records

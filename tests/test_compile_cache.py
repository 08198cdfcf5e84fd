"""The persistent compilation cache (axturbo/runtime/compile_cache.py): where each value points,
and that a second start of train.py and sample.py loads its programs from the cache (JAX's
cache-hit events, counted by the CLIs, and the files in the cache folder)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from axturbo.runtime import compile_cache
from tests import script_runs

CONFIG = str(script_runs.REPO / 'tests' / 'micro_train_config.py')


# ---------------------------------------------------------------------------- values

def test_default_is_jax_env_then_xdg_then_home(monkeypatch, tmp_path):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compile_cache.resolve('default') == str(tmp_path / 'home/.cache/axturbo/jax_compile')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compile_cache.resolve('default') == str(tmp_path / 'xdg/axturbo/jax_compile')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'site'))
  assert compile_cache.resolve('default') == str(tmp_path / 'site')


def test_a_default_folder_that_cannot_be_made_only_warns(monkeypatch, tmp_path, caplog):
  """The default folder under a read-only home: a warning and no cache; the same folder given
  explicitly: one ValueError naming the flag."""
  import jax
  blocker = tmp_path / 'file'
  blocker.write_text('')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(blocker / 'cache'))
  before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
  try:
    with caplog.at_level('WARNING'):
      assert compile_cache.enable('default', '--compile_cache') is None
    assert not jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update('jax_enable_compilation_cache', before[0])
    jax.config.update('jax_compilation_cache_dir', before[1])
  assert f'compilation cache off: cannot create {blocker}/cache' in caplog.text
  with pytest.raises(ValueError, match=r"^--compile_cache='.*/file/cache': cannot create"):
    compile_cache.enable(str(blocker / 'cache'), '--compile_cache')


def test_empty_is_off_paths_and_urls_are_kept(monkeypatch, tmp_path):
  monkeypatch.setenv('HOME', str(tmp_path))
  assert compile_cache.resolve('') is None and compile_cache.resolve('  ') is None
  assert compile_cache.resolve(None) is None
  assert compile_cache.resolve('~/jc') == str(tmp_path / 'jc')
  assert compile_cache.resolve('gs://bucket/jax_cache') == 'gs://bucket/jax_cache'


def test_the_configs_default_to_the_cache():
  from configs import official, tiny
  assert official.get_config().compile_cache == compile_cache.DEFAULT
  assert tiny.get_config().compile_cache == compile_cache.DEFAULT


# ---------------------------------------------------------------------------- second start

def _env(tmp: pathlib.Path, devices: int) -> dict:
  """script_runs.env without its JAX_COMPILATION_CACHE_DIR, so that 'default' falls through
  to the per-user folder (here under tmp/xdg); every program is cached (min time 0)."""
  env = script_runs.env(tmp, devices)
  del env['JAX_COMPILATION_CACHE_DIR']
  env['XDG_CACHE_HOME'] = str(tmp / 'xdg')
  return env


def _entries(folder: pathlib.Path) -> set[str]:
  return {p.name for p in folder.rglob('*') if p.is_file()} if folder.exists() else set()


def _loaded(text: str) -> tuple[int, int]:
  """(hits, lookups) of the run's closing 'compilation cache ...' line."""
  [m] = re.findall(r'compilation cache \S+: (\d+) of (\d+) programs loaded', text)
  return int(m[0]), int(m[1])


@pytest.mark.e2e
def test_train_second_start_loads_the_train_step_from_the_cache(tmp_path):
  env = _env(tmp_path, devices=1)
  cache = tmp_path / 'xdg' / 'axturbo' / 'jax_compile'

  def train(name, *extra):
    r = subprocess.run(
        [sys.executable, 'train.py', f'--config={CONFIG}', f'--workdir={tmp_path / name}',
         '--config.train.total_steps=2', *extra],
        cwd=script_runs.REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return (tmp_path / name / 'train.log').read_text()

  log = train('off', '--config.compile_cache=')
  assert 'compilation cache: off' in log and not cache.exists()

  log = train('first')
  first = _entries(cache)
  assert first, 'the first start wrote nothing to the cache'
  step = re.search(r'compiled the train step in [\d.]+ s \((\d+) of (\d+) programs', log)
  assert step and step.group(1) == '0', log[-2000:]
  assert _loaded(log)[0] == 0

  log = train('second')
  step = re.search(r'compiled the train step in [\d.]+ s \((\d+) of (\d+) programs', log)
  assert step and step.group(1) == step.group(2) != '0', log[-2000:]
  assert _loaded(log)[0] > 0


@pytest.mark.e2e
def test_sample_second_start_hits_the_cache_and_an_unwritable_folder_is_one_line(tmp_path):
  import flax.linen as nn
  import jax
  from axturbo.models import audiox
  from axturbo.runtime import checkpoints
  from tests import micro_train_config
  m = micro_train_config.get_config().model
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(
      jax.random.PRNGKey(0))
  ckpt = checkpoints.save_params(tmp_path / 'student', params, m, {'kind': 'student'})
  env = _env(tmp_path, devices=1)
  cache = tmp_path / 'explicit'

  def sample(out, *extra):
    return subprocess.run(
        [sys.executable, 'sample.py', f'--checkpoint={ckpt}', '--prompt=rain',
         '--steps=1', '--nospectrogram', f'--out={tmp_path / out}', *extra],
        cwd=script_runs.REPO, env=env, capture_output=True, text=True, timeout=900)

  first = sample('a', f'--compile_cache={cache}')
  assert first.returncode == 0, first.stderr[-3000:]
  # A sampler compiles some programs twice in one process (the second is a hit already).
  hits1, lookups1 = _loaded(first.stderr)
  assert _entries(cache) and hits1 < lookups1
  second = sample('b', f'--compile_cache={cache}')
  assert second.returncode == 0, second.stderr[-3000:]
  hits2, lookups2 = _loaded(second.stderr)
  assert lookups2 == lookups1 and hits2 > hits1, second.stderr[-2000:]

  blocker = tmp_path / 'file'
  blocker.write_text('')
  bad = sample('c', f'--compile_cache={blocker}/cache')
  assert bad.returncode == 1 and 'Traceback' not in bad.stderr, bad.stderr[-2000:]
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith('error: --compile_cache=') and 'cannot create' in last, last
  assert not list((tmp_path / 'c').glob('*.wav'))

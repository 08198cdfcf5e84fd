"""Every trainer setting is checked before compiling (docs/failures.md, command lines): one
line naming the `--config.` field and what it accepts."""
import subprocess
import sys

import pytest

from axturbo.distill import state as distill_state
from axturbo.train import state as train_state
from tests import micro_distill_config
from tests import micro_train_config
from tests import script_runs

import configs.official
import configs.tiny


def _set(config, dotted: str, value):
  *path, key = dotted.split('.')
  section = config
  for p in path:
    section = section[p]
  section[key] = value


def test_shipped_configs_pass():
  for c in (configs.official.get_config(), configs.tiny.get_config(),
            micro_train_config.get_config(), micro_distill_config.get_config()):
    train_state.check_train_config(c)
    distill_state.check_distill_config(c)


@pytest.mark.parametrize('field,value,allowed', [
    ('train.optim.lr', -1e-3, 'a finite number > 0'),
    ('train.optim.lr', float('nan'), 'a finite number > 0'),
    ('train.total_steps', 0, 'an integer >= 1'),
    ('train.total_steps', -5, 'an integer >= 1'),
    ('train.checkpoint_every', 0, 'an integer >= 1'),
    ('train.log_every', 0, 'an integer >= 1'),
    ('train.eval_every', -1, 'an integer >= 0'),
    ('train.eval_sample_steps', -25, 'an integer >= 0'),
    ('train.keep_checkpoints', 0, 'an integer >= 1'),
    ('train.optim.b2', 1.0, 'a finite number >= 0 and < 1'),
    ('train.optim.eps', 0.0, 'a finite number > 0'),
    ('train.optim.weight_decay', -0.1, 'a finite number >= 0'),
    ('train.optim.schedule', 'linear', "one of ('inverse', 'constant', 'cosine')"),
    ('train.optim.inverse.warmup', 1.0, 'a finite number >= 0 and < 1'),
    ('train.optim.warmup_steps', -1, 'an integer >= 0'),
    ('train.optim.final_lr_fraction', 2.0, 'a finite number >= 0 and <= 1'),
    ('train.optim.grad_clip_norm', -1.0, 'a finite number >= 0'),
    ('train.ema.beta', 1.5, 'a finite number >= 0 and <= 1'),
    ('train.ema.power', 0.0, 'a finite number > 0'),
    ('train.ema.update_after_step', -1, 'an integer >= 0'),
    ('train.cfg_dropout_prob', 1.2, 'a finite number >= 0 and <= 1'),
    ('train.timestep_sampler', 'sobol', "one of ('uniform', 'logit_normal')"),
    ('train.data_source', 'disk', "one of ('pipeline', 'synthetic')"),
])
def test_train_settings(field, value, allowed):
  c = micro_train_config.get_config()
  _set(c, field, value)
  with pytest.raises(ValueError) as e:
    train_state.check_train_config(c)
  assert str(e.value) == f'--config.{field}={value!r}: must be {allowed}'


@pytest.mark.parametrize('field,value,needle', [
    ('distill.student.lr', -1e-4, 'a finite number > 0'),
    ('distill.fake.lr', 0.0, 'a finite number > 0'),
    ('distill.total_steps', 0, 'an integer >= 1'),
    ('distill.checkpoint_every', 0, 'an integer >= 1'),
    ('distill.eval_every', -2, 'an integer >= 0'),
    ('distill.ema.beta', -0.5, '>= 0 and <= 1'),
    ('distill.num_steps', 0, 'an integer >= 1'),
    ('distill.index_probs', (0.5, 0.5), 'one entry per student step'),
    ('distill.guidance_scale', -1.0, '>= 0'),
    ('distill.normalizer', 'l2', 'one of'),
    ('distill.t_dmd_range', (0.5, 0.2), '0 <= lo < hi <= 1'),
    ('distill.disc_max_t', 0.0, '> 0 and <= 1'),
    ('distill.adv_weight', -1.0, '>= 0'),
    ('distill.update_schedule', 'gan', 'one of'),
    ('distill.student_steps_per_cycle', 0, 'an integer >= 1'),
    ('distill.batch_size', -8, 'an integer >= 0'),
])
def test_distill_settings(field, value, needle):
  c = micro_distill_config.get_config()
  _set(c, field, value)
  with pytest.raises(ValueError) as e:
    distill_state.check_distill_config(c)
  assert str(e.value).startswith(f'--config.{field}=') and needle in str(e.value)


@pytest.mark.e2e
@pytest.mark.parametrize('script,override,field', [
    ('train.py', '--config.train.optim.lr=-0.001', 'train.optim.lr'),
    ('train.py', '--config.train.total_steps=0', 'train.total_steps'),
    ('train.py', '--config.train.checkpoint_every=0', 'train.checkpoint_every'),
    ('distill.py', '--config.distill.student.lr=-0.001', 'distill.student.lr'),
])
def test_bad_settings_stop_before_compiling(tmp_path, script, override, field):
  config = 'micro_train_config' if script == 'train.py' else 'micro_distill_config'
  r = subprocess.run(
      [sys.executable, script, f'--config=tests/{config}.py', f'--workdir={tmp_path / "w"}',
       *(['--teacher=/nonexistent'] if script == 'distill.py' else []), override],
      cwd=script_runs.REPO, env=script_runs.env(tmp_path, devices=1), capture_output=True,
      text=True, timeout=600)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: --config.{field}='), last
  assert 'compiling' not in r.stderr
  assert not (tmp_path / 'w' / 'export').exists()

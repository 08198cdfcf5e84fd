"""DMD on an exactly known Gaussian teacher converges, through
the same rollout, DMD gradient, losses and schedule functions as the real distillation
(benchmarks/dmd_toy.py). Learning rates: DMD2 rule 1e-2 / 1e-2 (student / fake); official 5:1 rule
1e-3 / 1e-2 (the student 10x slower than the fake; with equal rates it collapses). Batch 256,
Adam, target N(1.5, 0.5^2) in 16-D; student read off as the average over the last quarter of the
steps; tolerances 5 % of the target mean and std (seeds 0-3 all within 1 %).
"""
import pytest

from benchmarks import dmd_toy


def _toy(**kw):
  return dmd_toy.summary(dmd_toy.ToyConfig(**kw))


def test_toy_converges_with_dmd2_rule():
  mean, std = _toy(schedule='dmd2', student_lr=1e-2, fake_lr=1e-2, steps=3000)
  assert abs(mean - 1.5) < 0.075 and abs(std - 0.5) < 0.025, (mean, std)


def test_toy_official_rule_converges_with_small_student_lr_and_collapses_with_equal_lr():
  mean, std = _toy(schedule='audiox', student_lr=1e-3, fake_lr=1e-2, steps=8000)
  assert abs(mean - 1.5) < 0.075 and abs(std - 0.5) < 0.025, (mean, std)
  _, std = _toy(schedule='audiox', student_lr=1e-2, fake_lr=1e-2, steps=3000)
  assert std < 0.1, f'5:1 with equal lr collapsed the variance in the reference toy; got {std}'


def test_toy_flipped_dmd_sign_diverges():
  mean, _ = _toy(schedule='dmd2', student_lr=1e-2, fake_lr=1e-2, steps=1500, flip_sign=True)
  assert abs(mean - 1.5) > 1.0, 'a flipped DMD sign must not converge'


def test_toy_rejects_unknown_schedule():
  with pytest.raises(ValueError, match='schedule'):
    dmd_toy.run_toy(dmd_toy.ToyConfig(schedule='dmd'))

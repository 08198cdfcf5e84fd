"""tests/micro_train_config.py (a tiny AudioX that compiles in seconds on CPU) + a distill section
for the distillation tests."""
from tests import micro_train_config


def get_config(arg=None):
  c = micro_train_config.get_config(arg)
  d = c.distill
  d.data_source = 'synthetic'
  d.update_schedule, d.adv_weight = 'audiox', 1.0   # the official 5:1 schedule and weights
  d.log_every, d.checkpoint_every = 2, 2
  d.batch_size = 8
  d.total_steps = 12
  d.student.lr = 1e-3
  d.fake.lr = 1e-2
  for o in (d.student, d.fake):
    o.schedule = 'constant'        # the first update already moves the weights
    o.eps = 1e-3                   # see micro_train_config: rounding-noise gradients stay still
  d.ema.beta = 0.9
  return c

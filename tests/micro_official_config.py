"""configs/official.py shrunk only in size, for the test that runs the guide's official launch
lines (tests/test_official_launch.py): the micro towers with the Oobleck codec (as
benchmarks/gpu_suite.py's micro size), the 'hf' T5 tokenizer read from
`model.text.tokenizer_dir` (a tiny local tokenizer stands in for t5-base's), and in-process
decoding. Everything the official config requires stays required."""
from benchmarks import gpu_suite
from configs import official


def get_config(arg=None):
  c = official.get_config(arg)
  m = gpu_suite.micro_model_config()
  m.text.update(tokenizer='hf', tokenizer_dir='')   # as configs/official.py: given on the line
  m.t5.update(vocab_size=16)                        # the stand-in tokenizer's 9 ids fit
  c.model = m
  c.distill.disc_num_blocks = m.disc.num_heads
  c.data.num_workers = 0                            # 2 CPU cores: decode in-process
  c.train.total_steps = c.distill.total_steps = 2
  c.train.log_every = c.distill.log_every = 1
  return c

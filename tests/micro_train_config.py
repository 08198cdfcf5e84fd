"""configs/tiny.py shrunk further for trainer tests: compiles in seconds on CPU."""
import ml_collections

from configs import micro, tiny


def get_config(arg=None):
  c = tiny.get_config(arg)
  m = micro.shrink_towers(c.model, io_channels=32)   # the patch codec below: 2 x hop 16
  m.audio_samples = 256                              # patch codec hop 16: 16 frames x 32 ch
  m.prompt_samples = 256                             # prompt encoder hop 16: 16 frames
  m.codec = 'patch'                                  # exact and compiles faster than 'mel'
  m.patch = ml_collections.ConfigDict(dict(hop=16, transform='dct', scale=0.16))
  m.audio_prompt.encoder = 'vae'                     # the official path: its own Oobleck copy
  m.vae.update(channels=4, c_mults=(1, 2), strides=(4, 4), latent_dim=4)
  c.data.batch_size = 8
  t = c.train
  t.data_source = 'synthetic'
  # The prompt's Oobleck encoder stays frozen: its backward pass is slow to compile on CPU.
  t.trainable = ('text', 'clip', 'video', 'audio_prompt/proj_features_128',
                 'audio_prompt/proj_out', 'maf', 'trunk')
  t.total_steps = 6
  t.log_every = 2
  t.checkpoint_every = 2
  t.eval_every = c.distill.eval_every = 0            # a test turns evaluation on itself
  t.eval_event_clips = c.distill.eval_event_clips = 0
  t.ema.beta = 0.9
  t.optim.warmup_steps = 0                           # the first step already moves params
  # Adam divides by sqrt(v) + eps: with the default 1e-8 a parameter whose gradient is rounding
  # noise (~1e-12) moves by +-lr, so two exact-arithmetic-equal runs (sharded vs not) diverge.
  t.optim.eps = 1e-3
  c.mesh.shape = (1, -1, 1)
  return c

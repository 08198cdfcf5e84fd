"""configs/tiny.py shrunk further for trainer tests: compiles in seconds on CPU."""
import ml_collections

from configs import tiny


def get_config(arg=None):
  c = tiny.get_config(arg)
  m = c.model
  m.audio_samples = 256                              # patch codec hop 16: 16 frames x 32 ch
  m.prompt_samples = 256                             # prompt encoder hop 16: 16 frames
  m.codec = 'patch'                                  # exact and compiles faster than 'mel'
  m.patch = ml_collections.ConfigDict(dict(hop=16, transform='dct', scale=0.16))
  m.audio_prompt.encoder = 'vae'                     # the official path: its own Oobleck copy
  m.cond_dim = 32
  m.vae.update(channels=4, c_mults=(1, 2), strides=(4, 4), latent_dim=4)
  m.text.update(max_length=8)
  m.t5.update(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
  m.clip.update(hidden_size=32, intermediate_size=32, num_layers=1, num_heads=2, image_size=16,
                patch_size=8)
  m.video.update(dim=32, num_frames=2, tokens_per_frame=5, sync_len=4, sync_dim=32, out_tokens=4,
                 depth=1, heads=2, dim_head=16, mlp_dim=32)
  m.audio_prompt.update(latent_seq_len=16, prompt_tokens=4, output_dim=32)
  m.maf.update(dim=32, num_experts_per_modality=2, num_heads=2, num_layers=1)
  m.trunk.update(io_channels=32, embed_dim=32, depth=2, num_heads=2, head_dim=16, cond_dim=32,
                 cond_len=16, seq_len=16, mlp_hidden=32, fourier_dim=16)
  m.disc.update(in_channels=32)
  c.data.batch_size = 8
  t = c.train
  t.data_source = 'synthetic'
  # The prompt's Oobleck encoder stays frozen: its backward pass is slow to compile on CPU.
  t.trainable = ('text', 'clip', 'video', 'audio_prompt/proj_features_128',
                 'audio_prompt/proj_out', 'maf', 'trunk')
  t.total_steps = 6
  t.log_every = 2
  t.checkpoint_every = 2
  t.ema.beta = 0.9
  t.optim.warmup_steps = 0                           # the first step already moves params
  # Adam divides by sqrt(v) + eps: with the default 1e-8 a parameter whose gradient is rounding
  # noise (~1e-12) moves by +-lr, so two exact-arithmetic-equal runs (sharded vs not) diverge.
  t.optim.eps = 1e-3
  c.mesh.shape = (1, -1, 1)
  return c

"""A CPU-sized AudioX: the official code path with every tower shrunk.

16 kHz stereo, 2.048 s clips (256 latent frames of 256 channels: the parameter-free patch codec,
hop 128, docs/latent_codec.md), audio prompts as long (own tiny Oobleck encoder, 128 frames),
10 video frames of 32x32 at 5 fps, a byte-level tokenizer (no vocabulary file), and towers
small enough to train from scratch on 2 CPU cores.
"""
import ml_collections as mlc

from configs import official


def model_config() -> mlc.ConfigDict:
  m = official.model_config()
  m.sample_rate = 16000
  m.audio_samples = 32768        # 256 patch-codec frames
  m.prompt_samples = 32768       # prompts as long as the target (inpainting the whole clip)
  m.cond_dim = 64
  # Target latents: mid/side + DCT-II frames of 128 samples, exactly invertible; scale = the
  # measured waveform std of the embedded data, so latents have ~unit variance.
  m.codec = 'patch'
  m.patch = mlc.ConfigDict(dict(hop=128, transform='dct', scale=0.16))
  # The audio-prompt conditioner's own (randomly initialised, trainable) Oobleck encoder.
  m.vae.update(channels=16, c_mults=(1, 2, 4, 8), strides=(2, 4, 4, 8), latent_dim=16)
  m.text.update(tokenizer='byte', max_length=32)
  m.t5.update(vocab_size=259, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
  m.clip.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=32,
                patch_size=8)
  m.video.update(dim=64, num_frames=10, tokens_per_frame=17, sync_len=24, sync_dim=64,
                 out_tokens=16, depth=1, heads=2, dim_head=32, mlp_dim=128)
  m.audio_prompt.update(latent_seq_len=128, prompt_tokens=16, output_dim=64)
  m.maf.update(dim=64, num_experts_per_modality=8, num_heads=4, num_layers=2)
  # embed_dim >= io_channels so the velocity read-out has full rank; FFN ratio 1 keeps the
  # cost ~6x the former 128-frame x 16-channel trunk (docs/latent_codec.md).
  # scan_layers=False: on XLA:CPU the backward pass of a scanned layer stack is ~9x slower than
  # the unrolled one (benchmarks in docs/benchmarks.md); accelerators keep the scan.
  m.trunk.update(io_channels=256, embed_dim=256, depth=4, num_heads=8, head_dim=32, cond_dim=64,
                 cond_len=64, seq_len=256, mlp_hidden=256, scan_layers=False)
  m.disc.update(num_heads=2, in_channels=256, hidden=32)
  return m


def data_config() -> mlc.ConfigDict:
  d = official.data_config()
  d.update(source='embedded', batch_size=8, num_clips=2048, heldout_clips=64, num_workers=0,
           read_threads=2, read_buffer=16, crop_grid_s=1.0)
  return d


def train_config() -> mlc.ConfigDict:
  """Every tower trains from scratch (except the VAE) at a large LR: the loss falls in minutes."""
  t = official.train_config()
  t.total_steps = 240
  # From scratch: every tower but the prompt's own Oobleck encoder (random and frozen: its
  # backward pass dominates CPU compile time).
  t.trainable = ('text', 'clip', 'video', 'audio_prompt/proj_features_128',
                 'audio_prompt/proj_out', 'maf', 'trunk')
  t.lr = 1e-3
  t.schedule = 'cosine'
  t.warmup_steps = 20
  t.final_lr_fraction = 0.1
  t.grad_clip_norm = 1.0
  t.ema.beta = 0.99
  t.log_every = 20
  t.checkpoint_every = 100
  # ~ a 2048^2 f32 matmul on an idle 2-core AVX2 host (one JAX CPU device uses both cores).
  t.peak_flops_per_device = 150e9
  return t


def distill_config() -> mlc.ConfigDict:
  """CPU-sized distillation of a configs/tiny.py teacher (docs/distillation.md).

  DMD2's schedule (fake model + discriminator every step, the student every 5th) with the
  adversarial weight at 0.1: on this teacher the official 5:1 schedule ran away at adversarial
  weights 1, 0.1 and 0 (the fake falls behind the student), while DMD2's stayed stable with a
  student lr from 1e-4 to 1e-3, the highest being the fastest. Constant rates: InverseLR's
  0.99^n warm-up alone would take ~100 of the few updates a CPU run makes.
  """
  d = official.distill_config()
  d.disc_num_blocks = 2          # = model.disc.num_heads
  d.schedule = 'dmd2'
  d.adv_weight = 0.1
  d.batch_size = 4
  d.total_steps = 200            # 200 fake + D updates, 40 student updates
  d.schedule_lr = 'constant'
  d.student.lr = 1e-3
  d.fake.lr = 1e-3
  d.student.grad_clip_norm = 1.0
  d.fake.grad_clip_norm = 1.0
  d.ema.beta = 0.99
  d.log_every = 20
  d.checkpoint_every = 100
  d.peak_flops_per_device = 150e9
  return d


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  del arg
  c = official.get_config()
  # One CPU device: the activation sharding hints have nothing to shard.
  c.mesh.activation_constraints = False
  c.model = model_config()
  c.data = data_config()
  c.train = train_config()
  c.distill = distill_config()
  return c

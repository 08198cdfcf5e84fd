"""A CPU-sized AudioX: the official code path with every tower shrunk.

16 kHz stereo, 2.048 s clips (128 latent frames of a hop-256 VAE), 1.024 s audio prompts,
10 video frames of 32x32 at 5 fps, a byte-level tokenizer (no vocabulary file), and towers
small enough to train from scratch on 2 CPU cores.
"""
import ml_collections as mlc

from configs import official


def model_config() -> mlc.ConfigDict:
  m = official.model_config()
  m.sample_rate = 16000
  m.audio_samples = 32768        # 128 latent frames
  m.prompt_samples = 16384       # 64 latent frames
  m.cond_dim = 64
  m.vae.update(channels=16, c_mults=(1, 2, 4, 8), strides=(2, 4, 4, 8), latent_dim=16)
  m.text.update(tokenizer='byte', max_length=32)
  m.t5.update(vocab_size=259, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
  m.clip.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=32,
                patch_size=8)
  m.video.update(dim=64, num_frames=10, tokens_per_frame=17, sync_len=24, sync_dim=64,
                 out_tokens=16, depth=1, heads=2, dim_head=32, mlp_dim=128)
  m.audio_prompt.update(latent_seq_len=64, prompt_tokens=16, output_dim=64)
  m.maf.update(dim=64, num_experts_per_modality=8, num_heads=4, num_layers=2)
  m.trunk.update(io_channels=16, embed_dim=128, depth=4, num_heads=8, head_dim=16, cond_dim=64,
                 cond_len=64, seq_len=128, mlp_hidden=256)
  m.disc.update(num_heads=2, in_channels=16, hidden=32)
  return m


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  del arg
  c = official.get_config()
  c.model = model_config()
  return c

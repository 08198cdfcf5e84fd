"""AudioX-Turbo at the released size (official_architecture.md; loads the official weights).

  python sample.py --config configs/official.py ...
  python -m axturbo.convert --config configs/official.py ...
"""
import ml_collections as mlc


def model_config() -> mlc.ConfigDict:
  """Network sizes of the released model. Every field is a field of one Flax module."""
  m = mlc.ConfigDict()
  m.sample_rate = 44100
  m.audio_samples = 485100       # 11 s generated; 236 latent frames
  m.prompt_samples = 441000      # 10 s audio prompt; 215 latent frames
  m.video_fps = 5
  m.cond_dim = 768
  m.dtype = 'float32'            # compute dtype of every network; params stay float32

  m.vae = mlc.ConfigDict(dict(channels=128, c_mults=(1, 2, 4, 8, 16), strides=(2, 4, 4, 8, 8),
                              latent_dim=64, in_channels=2, out_channels=2))
  m.text = mlc.ConfigDict(dict(
      tokenizer='hf',             # 'hf': SentencePiece vocabulary from a local folder; 'byte'
      tokenizer_dir='',           # local folder of t5-base (tokenizer + weights), no downloads
      max_length=128))
  m.t5 = mlc.ConfigDict(dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                             num_heads=12, relative_attention_num_buckets=32,
                             relative_attention_max_distance=128, eps=1e-6,
                             feed_forward_proj='relu'))
  m.clip = mlc.ConfigDict(dict(hidden_size=768, intermediate_size=3072, num_layers=12,
                               num_heads=12, image_size=224, patch_size=32,
                               hidden_act='quick_gelu', eps=1e-5))
  m.clip_dir = ''                 # local folder of openai/clip-vit-base-patch32, if not converted
  m.video = mlc.ConfigDict(dict(dim=768, num_frames=50, tokens_per_frame=50, sync_len=240,
                                sync_dim=768, out_tokens=128, depth=4, heads=16, dim_head=64,
                                mlp_dim=3072))
  m.audio_prompt = mlc.ConfigDict(dict(
      latent_seq_len=215, prompt_tokens=128, output_dim=768,
      official_masking=False,     # True reproduces the official always-on span masking
      mask_ratio_start=0.25, mask_ratio_end=0.75))
  m.maf = mlc.ConfigDict(dict(dim=768, num_experts_per_modality=64, num_heads=24, num_layers=8,
                              mlp_ratio=4.0, dropout=0.1,
                              # Official argument swap: torch slot 'v' receives text, 't' video.
                              modality_order=('text', 'video', 'audio')))
  m.trunk = mlc.ConfigDict(dict(io_channels=64, embed_dim=1536, depth=24,
                                num_heads=64, head_dim=24,   # official quirk: 64 heads of 24
                                cond_dim=768, cond_len=384, seq_len=236, mlp_hidden=4096,
                                kernel_size=3, fourier_dim=256, rope_theta=10000.0,
                                scan_layers=True, remat_policy='none'))
  m.disc = mlc.ConfigDict(dict(num_heads=6, in_channels=64, hidden=128, negative_slope=0.2))
  m.attention_impl = ''           # '' lets XLA choose; 'cudnn' for the flash kernel on GPU
  return m


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  del arg
  c = mlc.ConfigDict()
  c.model = model_config()
  c.seed = 42
  return c

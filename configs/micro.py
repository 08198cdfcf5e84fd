"""The micro towers: the conditioners, MAF and trunk at width 32 with one or two layers, a model
that compiles in seconds on CPU.

Not a config file itself: `shrink_towers` shrinks the model section of one. Its users are
tests/micro_train_config.py (on configs/tiny.py) and benchmarks/gpu_suite.py's micro size (on
configs/official.py); each keeps its own codec, clip length and prompt-encoder sizes, which
must give 16 latent frames.
"""
import ml_collections as mlc


def shrink_towers(m: mlc.ConfigDict, io_channels: int) -> mlc.ConfigDict:
  """Shrinks `m` (a `config.model`) in place and returns it; `io_channels` is the codec's
  latent width, the trunk's input and the discriminator's."""
  m.cond_dim = 32
  m.text.update(max_length=8)
  m.t5.update(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
  m.clip.update(hidden_size=32, intermediate_size=32, num_layers=1, num_heads=2, image_size=16,
                patch_size=8)
  m.video.update(dim=32, num_frames=2, tokens_per_frame=5, sync_len=4, sync_dim=32, out_tokens=4,
                 depth=1, heads=2, dim_head=16, mlp_dim=32)
  m.audio_prompt.update(latent_seq_len=16, prompt_tokens=4, output_dim=32)
  m.maf.update(dim=32, num_experts_per_modality=2, num_heads=2, num_layers=1)
  # cond_len: 8 text + 4 video + 4 audio-prompt tokens.
  m.trunk.update(io_channels=io_channels, embed_dim=32, depth=2, num_heads=2, head_dim=16,
                 cond_dim=32, cond_len=16, seq_len=16, mlp_hidden=32, fourier_dim=16)
  m.disc.update(in_channels=io_channels)
  return m

"""AudioX-Turbo at the released size (docs/official.md; loads the official weights).

  python -m axturbo.convert --config configs/official.py ... --out /ckpt/audiox_turbo
  python sample.py --checkpoint /ckpt/audiox_turbo ...   # the checkpoint carries this config
"""
import ml_collections as mlc


def model_config() -> mlc.ConfigDict:
  """Network sizes of the released model. Every field is a field of one Flax module, but
  `time_shift`, which travels with the weights because training and sampling must agree on it."""
  m = mlc.ConfigDict()
  m.sample_rate = 44100
  m.audio_samples = 485100       # 11 s generated; 236 latent frames
  m.prompt_samples = 441000      # 10 s audio prompt; 215 latent frames
  m.video_fps = 5
  m.cond_dim = 768
  m.dtype = 'float32'            # compute dtype of every network; params stay float32
  # flow.shift_times of the time axis: training draws t shifted, and the Euler solver, the
  # student and its distillation step on the shifted grid. > 1 spends both near noise; 1 = official.
  m.time_shift = 1.0

  m.codec = 'oobleck'            # latent codec of the target audio: 'oobleck' (m.vae) | 'patch' | 'mel'
  m.vae = mlc.ConfigDict(dict(channels=128, c_mults=(1, 2, 4, 8, 16), strides=(2, 4, 4, 8, 8),
                              latent_dim=64, in_channels=2, out_channels=2))
  m.text = mlc.ConfigDict(dict(
      tokenizer='hf',             # 'hf': SentencePiece vocabulary from a local folder; 'byte'
      # Local folder of t5-base's tokenizer (no downloads): train.py/distill.py stop at once,
      # saying where it comes from, when it is empty; a converted checkpoint holds its own.
      tokenizer_dir='',
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
  # Synchformer's video extractor (the released ViT-B/16 sizes): used only when a checkpoint
  # was converted with --synchformer, to compute sync features from raw video (sample.py).
  m.synchformer = mlc.ConfigDict(dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                      patch_size=16, tubelet_size=2, num_frames=16,
                                      image_size=224, eps=1e-6))
  m.audio_prompt = mlc.ConfigDict(dict(
      encoder='vae',              # own Oobleck encoder copy (official) | 'codec': model.codec's
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


def data_config() -> mlc.ConfigDict:
  """Input pipeline (axturbo/data/pipeline.py; fields checked by check_data_config)."""
  d = mlc.ConfigDict()
  d.source = 'manifest'           # 'manifest' (.jsonl or audio folder) | 'tfds' | 'embedded'
  d.batch_size = 8                # global; official defaults.ini: 8 per GPU process
  d.seed = 42                     # shuffle / crop / task / phase-flip randomness
  d.shuffle = True
  d.num_workers = 8               # decoding processes (grain mp_prefetch); 0 = in-process
  d.read_threads = 4              # reader threads per process
  d.read_buffer = 32              # examples prefetched per process
  d.fail_fast = False             # True: a bad sample raises instead of being skipped+counted
  d.max_skip_fraction = 0.1       # more skipped (after 100 samples) stops the run
  d.manifest = ''                 # train manifest .jsonl (official format) or audio folder
  d.heldout_manifest = ''         # split='heldout'
  d.root = ''                     # base of relative manifest paths ('' = working directory)
  # Source 'tfds': a dataset built by `python -m data.prepare` (or any TFDS dataset with its
  # features), e.g. 'axturbo_manifest/vggsound', under tfds_data_dir ('' = ~/tensorflow_datasets).
  d.tfds_name = ''
  d.tfds_data_dir = ''
  d.num_clips = 10000             # source 'embedded': train clips
  d.heldout_clips = 256           # source 'embedded': heldout clips
  d.duration_s = 0.0              # embedded clip length; 0 = fits audio and prompt (10 s)
  # Tasks drawn for examples without a fixed manifest `type` (embedded; axturbo/data/tasks.py).
  d.task_probs = mlc.ConfigDict(dict(
      text_to_audio=0.3, video_to_audio=0.15, text_video_to_audio=0.2, inpaint=0.1,
      continuation=0.15, audio_to_audio=0.05, all=0.05))
  # Weights of the embedded training clips' caption styles (data/embedded.py; held-out clips
  # stay uniform). Equal weights keep the original draw. A TFDS events dataset keeps the mix
  # it was built with (`data.prepare` records it and refuses to reuse it under another).
  d.caption_styles = mlc.ConfigDict(dict(category=1.0, count=1.0, order=1.0, timestamp=1.0))
  # Embedded training clips without these categories / each with at least one of them (held-out
  # clips keep all): a base that never heard a sound, then a fine-tune on it (docs/finetuning.md).
  d.exclude_categories = ()
  d.require_categories = ()
  d.require_share = 1.0           # the share of those clips drawn with require_categories
  d.random_crop = True            # official crop: offsets on a crop_grid_s grid
  d.crop_grid_s = 10.0
  d.phase_flip_p = 0.5            # official PhaseFlipper
  d.inpaint_ratio = (0.1, 0.5)    # masked span / clip length
  d.continuation_ratio = (0.25, 0.75)  # kept prefix / clip length
  return d


def optimizer_config(lr: float = 1e-5) -> mlc.ConfigDict:
  """One optimizer (axturbo/runtime/optim.py): `train.optim`, `distill.student`, `distill.fake`.

  Official: AdamW lr 1e-5, betas (0.9, 0.999), weight decay 1e-3 (torch AdamW eps 1e-8), the
  InverseLR schedule, no clipping.
  """
  o = mlc.ConfigDict()
  o.lr = lr
  o.b1, o.b2, o.eps, o.weight_decay = 0.9, 0.999, 1e-8, 1e-3
  o.schedule = 'inverse'           # 'inverse' (official InverseLR), 'constant', 'cosine'
  o.inverse = mlc.ConfigDict(dict(inv_gamma=1e6, power=0.5, warmup=0.99))
  o.warmup_steps = 0               # linear warmup of 'constant' / 'cosine'
  o.final_lr_fraction = 0.0        # 'cosine' end value as a fraction of lr (decays over total_steps)
  o.grad_clip_norm = 0.0           # global-norm clipping; 0 disables (official: none)
  return o


def lora_config() -> mlc.ConfigDict:
  """LoRA adapters (axturbo/runtime/lora.py): `train.lora` and `distill.lora`. `targets` are
  fnmatch patterns of module paths; the default is the trunk's attention and FFN kernels."""
  return mlc.ConfigDict(dict(
      enabled=False, rank=16, alpha=16.0, dropout=0.0,
      targets=tuple(f'trunk/layers/*/{m}' for m in ('q', 'k', 'v', 'attn_out', 'ffn_w1',
                                                    'ffn_w2', 'ffn_w3'))))


def train_config() -> mlc.ConfigDict:
  """Teacher training (train.py): optimizer, schedule, EMA, flow-matching options.

  Official values are the code defaults of the teacher wrapper (its own config is unreleased).
  """
  t = mlc.ConfigDict()
  t.total_steps = 1_000_000       # the global batch is config.data.batch_size
  t.data_source = 'pipeline'       # 'pipeline' (axturbo.data.pipeline) or 'synthetic' (benchmarks)
  t.init_from = ''                 # inference checkpoint (e.g. converted official weights) to start from
  # T5, CLIP and the VAE are frozen (not in `trainable`): they must come from `init_from`
  # (train.py stops at once, with what to pass, when it is empty).
  t.require_init_from = True
  # Networks updated by the optimizer ('/'-joined parameter-path prefixes); the rest is frozen
  # and has no optimizer state. Official fine-tune: MAF, trunk, video conditioner (not CLIP),
  # audio-prompt projections (not its VAE encoder copy). 'vae' is never trainable here.
  t.trainable = ('maf', 'trunk', 'video', 'audio_prompt/proj_features_128',
                 'audio_prompt/proj_out')
  t.optim = optimizer_config()
  # EMA as ema_pytorch(beta=0.9999, power=3/4, update_after_step=1); covers the trunk only.
  t.ema = mlc.ConfigDict(dict(enabled=True, subtrees=('trunk',), beta=0.9999, power=0.75,
                              update_after_step=1))
  # LoRA fine-tune (axturbo/runtime/lora.py, docs/finetuning.md): when enabled, only rank-`rank`
  # adapters on the kernels whose module paths match `targets` (fnmatch patterns) are trained;
  # every base weight is frozen (`trainable` is not used) and the EMA covers the adapters
  # (`ema.subtrees` is not used). Needs `init_from`, the base the adapters adapt.
  t.lora = lora_config()
  t.cfg_dropout_prob = 0.1         # whole post-MAF condition zeroed per sample
  t.timestep_sampler = 'uniform'   # stratified uniform (official: scrambled Sobol); 'logit_normal'
  # Loop, checkpoints, observability.
  t.log_every = 50
  t.eval_every = 0                 # held-out loss of the EMA weights (runtime/evaluation.py); 0 = off
  t.eval_sample_steps = 25         # and their Euler samples of one held-out clip per task; 0 = none
  t.eval_event_clips = 0           # and the event benchmark on that many embedded held-out clips
  t.eval_event_steps = (25,)       # at these Euler step counts, no CFG (eval/during_training.py)
  t.checkpoint_every = 10_000      # official defaults.ini
  t.keep_checkpoints = 3
  t.async_checkpointing = True
  t.export_ema = True              # write <workdir>/export (EMA merged into the full tree) at the end
  t.peak_flops_per_device = 989e12  # MFU denominator: H100 SXM dense bf16 (TPU v5p: 459e12)
  return t


def distill_config() -> mlc.ConfigDict:
  """Student distillation (distill.py): the official DMD + GAN settings (docs/official.md)
  plus optimizers, EMA and the loop."""
  d = mlc.ConfigDict()
  d.num_steps = 4                  # student grid flow.time_grid(4, model.time_shift)[:-1]
  d.index_probs = (0.25, 0.25, 0.25, 0.25)   # rollout target index
  d.guidance_scale = 6.0           # teacher CFG in the real score
  d.normalizer = 'audiox'          # or 'dmd2'
  d.t_dmd_range = (0.0, 1.0)       # official: full range (DMD2 clamps 0.02-0.98)
  d.disc_num_blocks = 6            # = model.disc.num_heads
  d.disc_max_t = 0.2               # t_d ~ U[0, 0.2)
  d.dm_weight, d.adv_weight, d.fake_weight, d.disc_weight = 1.0, 1.0, 1.0, 1.0
  d.update_schedule = 'audiox'     # 'audiox': 5 student steps, then 1 fake + D step; or 'dmd2'
  d.student_steps_per_cycle = 5
  d.fake_steps_per_cycle = 1
  d.fake_updates_per_student_update = 5   # 'dmd2': fake every step, student every 5th
  d.teacher = ''                   # teacher inference checkpoint (distill.py --teacher overrides)
  d.teacher_lora = ''              # an adapter (train.py's <workdir>/adapter) merged into it at load
  d.trainable = ('maf', 'trunk')   # student and fake train these; the conditioners are frozen
  # A student export (distill.py's <workdir>/export, a converted AudioX-Turbo) to start the
  # student from instead of the teacher; its model config must be the teacher's. Its
  # conditioners and VAE go into the export (the student still reads the teacher's features).
  d.init_student_from = ''
  # LoRA distillation (docs/finetuning.md, "Distilling an adapted student"): when enabled the
  # student is `init_student_from` (frozen) + adapters and the fake model the teacher (frozen) +
  # adapters; only the adapters and the discriminator heads train, the EMA covers the student's
  # adapters, and the run also writes <workdir>/adapter (the student's adapters alone, on
  # `init_student_from`). Needs `init_student_from`; targets must lie under `trainable`.
  d.lora = lora_config()
  d.total_steps = 100_000
  d.data_source = 'pipeline'       # 'pipeline' or 'synthetic' (as train.data_source)
  d.batch_size = 0                 # global batch; 0 = config.data.batch_size
  # Official: one AdamW + InverseLR over every network. Here each group has its own optax state
  # (an idle group never moves) and its own optimizer settings; 'cosine' decays over total_steps.
  d.student = optimizer_config()
  d.fake = optimizer_config()      # fake model + discriminator heads
  # EMA of the student (official: none, the raw student is released); exported when enabled.
  d.ema = mlc.ConfigDict(dict(enabled=True, beta=0.999, power=0.75, update_after_step=1))
  d.log_every = 50
  d.eval_every = 0                 # held-out loss of the student's EMA (runtime/evaluation.py)
  d.eval_sample_steps = 4          # and its samples (student sampler) of a clip per task; 0 = none
  d.eval_event_clips = 0           # and the event benchmark on that many embedded held-out clips
  d.eval_event_steps = (1, 2, 4)   # at these student step counts (eval/during_training.py)
  d.checkpoint_every = 2_000
  d.keep_checkpoints = 3
  d.async_checkpointing = True
  d.peak_flops_per_device = 989e12
  return d


def mesh_config() -> mlc.ConfigDict:
  """Device mesh (axturbo.runtime.sharding): (data, fsdp, tensor); one entry -1 = all remaining
  devices."""
  return mlc.ConfigDict(dict(shape=(1, -1, 1),
                             # Multi-slice TPU pods: each axis's across-slice factor (it
                             # divides that axis). Data parallelism spans the slices over
                             # the slow data-center network, FSDP stays inside one:
                             # e.g. shape=(2, -1, 1), dcn=(2, 1, 1) on 2 slices.
                             dcn=(1, 1, 1),
                             rules=(),  # (logical, mesh axes) pairs overriding DEFAULT_RULES
                             # Trace with the models' activation sharding hints: on the
                             # 8-way FSDP mesh they halve the teacher step's temporaries
                             # (docs/benchmarks.md).
                             activation_constraints=True))


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  del arg
  c = mlc.ConfigDict()
  c.model = model_config()
  c.data = data_config()
  c.train = train_config()
  c.distill = distill_config()
  c.mesh = mesh_config()
  # A jax.profiler trace of steps START..END (--config.profile.steps=START,END) into
  # <workdir>/tensorboard/plugins/profile (axturbo/runtime/profiling.py); () traces nothing.
  c.profile = mlc.ConfigDict(dict(steps=()))
  c.seed = 42
  # JAX's persistent compilation cache (axturbo/runtime/compile_cache.py): 'default' is
  # $JAX_COMPILATION_CACHE_DIR, else ~/.cache/axturbo/jax_compile (XDG); '' turns it off.
  c.compile_cache = 'default'
  return c

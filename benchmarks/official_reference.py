r"""The official AudioX-Turbo PyTorch code, timed the way benchmarks/gpu_suite.py times ours.

  python -m benchmarks.official_reference [--official DIR] --out DIR \
      [--size official|micro] [--sections t2a,throughput,teacher,v2a] [--precisions fp32,bf16]
      [--runs 20] [--warmup 3] [--device cuda]

The official code is not part of this repository. Point `--official` (default: $AXTURBO_OFFICIAL,
else `.official/`, which .gitignore ignores) at a copy of NoizAI/AudioX-Turbo at commit af50898:

  git -C <clone> archive af50898 audiox_turbo configs | tar -x -C <folder>

Its modules import packages that the released inference path never calls; stand-ins for them,
written for this repository, live in `benchmarks/official_stubs/` (its README lists them) and
join `sys.path` after the installed packages, so real ones win.

What runs is the released inference code, unmodified: `create_model_from_config` on
`configs/audiox_turbo_infer_4step.json` (without its VAE checkpoint path: weights are random),
`generate_diffusion_cond_dmd` for the student (4 steps) and `generate_diffusion_cond` for the
teacher (Euler with batched CFG), inputs built as its README does for each task. Hugging Face
`from_pretrained` of t5-base and openai/clip-vit-base-patch32 is replaced by the same
architectures built from their configs with random weights, and T5's SentencePiece tokenizer by
axturbo's byte tokenizer at the same 128-token padding (nothing is downloaded).

Precisions: 'fp32' is the code as released (float32, TF32 off as its generation module sets it;
T5 in float16 and the teacher's sampler under float16 autocast, as released); 'bf16' wraps the
call in torch.autocast(bfloat16) (its VAE decode still runs in float32: the code disables
autocast there).

Timed call (end to end): build the README's conditioning for the request (for text-to-audio an
all-zero video and a silent audio prompt, which the official conditioners encode: CLIP and the
prompt VAE encoder run), generate, crop to 10 s, copy the waveform to the host. Rows are merged
into DIR/official.json after each setting.
"""
import contextlib
import json
import os
import pathlib
import sys
import time
import traceback
import types

from absl import app
from absl import flags

from benchmarks import gpu_suite   # its configs/official.py sizes and its timing

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUBS = ROOT / 'benchmarks' / 'official_stubs'
PROMPT = 'A dog barks twice, then a bell rings over distant traffic.'
SECTIONS = ('t2a', 'throughput', 'teacher', 'v2a')

# gpu_suite defines its flags only when it runs as the program, so these names do not clash.
_OFFICIAL = flags.DEFINE_string('official', os.environ.get('AXTURBO_OFFICIAL',
                                                           str(ROOT / '.official')),
                                'Folder of the official code (env AXTURBO_OFFICIAL).')
_OUT = flags.DEFINE_string('out', None, 'Directory of official.json (rows are merged into it).',
                           required=True)
_SIZE = flags.DEFINE_enum('size', 'official', ['official', 'micro'], 'Model size.')
_SECTIONS = flags.DEFINE_list('sections', list(SECTIONS), f'From {",".join(SECTIONS)}.')
_PRECISIONS = flags.DEFINE_list('precisions', ['fp32', 'bf16'], 'From fp32,bf16.')
_BATCHES = flags.DEFINE_list('batches', ['32'], 'Throughput batch sizes.')
_TEACHER_STEPS = flags.DEFINE_integer('teacher_steps', 50, 'Euler steps of the teacher.')
_RUNS = flags.DEFINE_integer('runs', 20, 'Timed calls per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed calls per setting after the first.')
_DEVICE = flags.DEFINE_string('device', 'cuda', 'torch device.')
_BUDGET_S = flags.DEFINE_float('budget_s', 0,
                               'Start no new setting after this many seconds (0 = no limit).')


def add_official_to_path(official: pathlib.Path) -> None:
  """The official package first; our stand-ins after the installed packages, so real ones win."""
  import importlib.util
  if not (official / 'audiox_turbo').is_dir():
    sys.exit(f'error: no audiox_turbo/ package in {official} (--official or $AXTURBO_OFFICIAL; '
             'see this script\'s docstring)')
  sys.path.insert(0, str(official))
  sys.path.append(str(STUBS))
  if any(importlib.util.find_spec(m) is None for m in ('torchaudio', 'torchvision')):
    sys.path.append(str(STUBS / 'cpu_only'))


def patch_hub(m) -> None:
  """from_pretrained of T5 / CLIP / the T5 tokenizer -> random models of the same configs.

  Also re-creates two deprecated torch names the official modules import, should the installed
  torch have dropped them (`sdp_kernel` is used only off the inference path).
  """
  import torch
  import torch.backends.cuda
  import transformers
  from axturbo.data import tokenizers

  if not hasattr(torch.backends.cuda, 'sdp_kernel'):
    torch.backends.cuda.sdp_kernel = lambda *a, **k: contextlib.nullcontext()
  if not hasattr(torch.cuda.amp, 'autocast'):
    torch.cuda.amp.autocast = lambda *a, **k: torch.amp.autocast('cuda', *a, **k)

  t5 = m.t5
  t5_config = transformers.T5Config(
      vocab_size=t5.vocab_size, d_model=t5.d_model, d_kv=t5.d_kv, d_ff=t5.d_ff,
      num_layers=t5.num_layers, num_heads=t5.num_heads,
      relative_attention_num_buckets=t5.relative_attention_num_buckets,
      relative_attention_max_distance=t5.relative_attention_max_distance,
      layer_norm_epsilon=t5.eps, feed_forward_proj=t5.feed_forward_proj, is_encoder_decoder=False)
  c = m.clip
  clip_config = transformers.CLIPVisionConfig(
      hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, image_size=c.image_size,
      patch_size=c.patch_size, hidden_act=c.hidden_act, layer_norm_eps=c.eps, projection_dim=512)

  class ByteT5Tokenizer:
    """The call signature the official T5 conditioner uses; axturbo's byte ids."""

    def __init__(self):
      self.tok = tokenizers.ByteTokenizer(m.text.max_length)

    def __call__(self, texts, truncation=True, max_length=128, padding='max_length',
                 return_tensors='pt'):
      out = self.tok(list(texts))
      return {'input_ids': torch.as_tensor(out.input_ids, dtype=torch.long),
              'attention_mask': torch.as_tensor(out.attention_mask, dtype=torch.long)}

  transformers.T5EncoderModel.from_pretrained = classmethod(
      lambda cls, *a, **k: cls(t5_config))
  transformers.CLIPVisionModelWithProjection.from_pretrained = classmethod(
      lambda cls, *a, **k: cls(clip_config))
  transformers.AutoTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: ByteT5Tokenizer())


def official_config(official: pathlib.Path, size: str) -> dict:
  """The released inference config; no VAE checkpoint path; 'micro' shrinks the widths (the
  lengths are hard-wired in the official modules and stay)."""
  config = json.loads((official / 'configs' / 'audiox_turbo_infer_4step.json').read_text())
  model = config['model']
  audio_cond = next(c for c in model['conditioning']['configs'] if c['id'] == 'audio_prompt')
  audio_cond['config'].pop('pretransform_ckpt_path', None)
  if size == 'micro':
    for pre in (model['pretransform'], audio_cond['config']['pretransform_config']):
      for part in ('encoder', 'decoder'):
        pre['config'][part]['config']['channels'] = 4
    model['diffusion']['config'].update(embed_dim=96, depth=1)
    model['diffusion']['gate_type_config'].update(num_experts_per_modality=4, num_heads=4,
                                                  num_fusion_layers=1)
  return config


def micro_towers(m):
  """T5 / CLIP sizes of the micro run: widths the official conditioners hard-wire (768), one
  layer each."""
  m.t5.update(d_ff=64, num_layers=1, num_heads=2, d_kv=16)
  m.clip.update(intermediate_size=64, num_layers=1, num_heads=2)
  return m


class Reference:
  def __init__(self, args):
    import torch
    self.args = args
    self.t_start = time.perf_counter()
    official = pathlib.Path(args.official).resolve()
    m = gpu_suite.load_config('official').model   # before the official folder joins sys.path
    if args.size == 'micro':
      m = micro_towers(m)
    add_official_to_path(official)
    patch_hub(m)
    from audiox_turbo.models.factory import create_model_from_config
    self.config = official_config(official, args.size)
    self.device = args.device
    t0 = time.perf_counter()
    with torch.device(self.device):
      model = create_model_from_config(self.config)
    self.model = model.to(self.device).eval().requires_grad_(False)
    self.build_s = time.perf_counter() - t0
    name = (torch.cuda.get_device_name() if self.device == 'cuda' else 'cpu')
    self.device_name = f'{name}, torch {torch.__version__}'
    self.out = pathlib.Path(args.out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.path = self.out / 'official.json'
    self.rows = json.loads(self.path.read_text()) if self.path.is_file() else []
    params = sum(p.numel() for p in self.model.parameters())
    print(f'# official code on {self.device_name}; {params / 1e6:.1f} M parameters in the '
          f'state dict (T5 outside it); built in {self.build_s:.1f} s', flush=True)

  def sync(self):
    import torch
    if self.device == 'cuda':
      torch.cuda.synchronize()

  def record(self, section, variant, **row):
    import torch
    row = {'impl': 'official', 'section': section, 'variant': variant,
           'device': self.device_name, 'size': self.args.size, **row}
    if self.device == 'cuda':
      row['peak_gib'] = torch.cuda.max_memory_allocated() / 2**30
    self.rows = [r for r in self.rows if (r['section'], r['variant']) != (section, variant)]
    self.rows.append(row)
    tmp = self.path.with_suffix('.tmp')
    tmp.write_text(json.dumps(self.rows, indent=1))
    tmp.replace(self.path)
    ms = row.get('median_ms')
    print(f'  {section:10s} {variant:36s} ' + (f'median {ms:9.2f} ms  p90 {row["p90_ms"]:9.2f}  '
          f'first {row["first_s"]:6.1f} s' if ms is not None else str(row.get('error'))[:160]),
          flush=True)

  def conditioning(self, texts, video=False):
    """The README's conditioning list for len(texts) requests."""
    import torch
    fps, seconds = self.config.get('video_fps', 5), 10
    rate = self.config['sample_rate']
    out = []
    for text in texts:
      if video:   # frames in [0, 255] as read_video returns them; Synchformer features
        frames = torch.randint(0, 256, (seconds * fps, 3, 224, 224)).float()
        sync = torch.randn(1, 240, 768, device=self.device)
      else:
        frames = torch.zeros(seconds * fps, 3, 224, 224)
        sync = torch.zeros(1, 240, 768, device=self.device)
      audio = torch.zeros((2, int(rate * seconds)))   # load_and_process_audio(None, ...)
      out.append({'video_prompt': {'video_tensors': frames.unsqueeze(0),
                                   'video_sync_frames': sync},
                  'text_prompt': text, 'audio_prompt': audio.unsqueeze(0),
                  'seconds_start': 0, 'seconds_total': seconds})
    return out

  def autocast(self, precision):
    import torch
    if precision == 'bf16':
      return torch.autocast(self.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def time_generation(self, section, precision, *, batch=1, teacher=False, video=False):
    import torch
    from audiox_turbo.inference.generation import (generate_diffusion_cond,
                                                   generate_diffusion_cond_dmd)
    rate, size = self.config['sample_rate'], self.config['sample_size']
    keep = rate * 10

    def call(i):
      texts = [f'{PROMPT} #{i}.{j}' for j in range(batch)]
      cond = self.conditioning(texts, video=video)
      with self.autocast(precision), contextlib.redirect_stdout(_Null()), \
          contextlib.redirect_stderr(_Null()):   # its prints and tqdm bars
        if teacher:
          out = generate_diffusion_cond(self.model, steps=self.args.teacher_steps, cfg_scale=6,
                                        conditioning=cond, batch_size=batch, sample_size=size,
                                        seed=i, device=self.device)
        else:
          out = generate_diffusion_cond_dmd(self.model, steps=4, conditioning=cond,
                                            batch_size=batch, sample_size=size, seed=i,
                                            device=self.device)
      out[:, :, :keep].cpu()   # the waveform on the host ends the call

    if self.device == 'cuda':
      torch.cuda.reset_peak_memory_stats()
    stats = gpu_suite.time_calls(call, self.args.runs, self.args.warmup, self.sync)
    label = {'fp32': 'official fp32 (as released)', 'bf16': 'official bf16 autocast'}[precision]
    nfe = 2 * self.args.teacher_steps if teacher else 4
    if teacher:
      label += f', {self.args.teacher_steps} Euler steps, CFG 6'
    if video:
      label += ', CLIP on 50 frames'
    if section == 'throughput':
      label += f', batch {batch}'
    self.record(section, label, batch=batch, nfe=nfe, precision=precision, **stats,
                clips_per_s=1e3 * batch / stats['median_ms'])

  def over_budget(self) -> bool:
    return bool(self.args.budget_s) and time.perf_counter() - self.t_start > self.args.budget_s

  def run(self, section):
    for precision in self.args.precisions:
      if self.over_budget():
        self.record(section, f'skipped {precision}', error=f'--budget_s {self.args.budget_s}')
        continue
      if section == 't2a':
        self.time_generation('t2a', precision)
      elif section == 'throughput':
        for b in self.args.batches:
          if not self.over_budget():
            self.time_generation('throughput', precision, batch=b)
      elif section == 'teacher':
        self.time_generation('teacher', precision, teacher=True)
      elif section == 'v2a':
        self.time_generation('v2a', precision, video=True)


class _Null:
  def write(self, s):
    return len(s)

  def flush(self):
    pass


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  try:
    batches = [int(x) for x in _BATCHES.value]
  except ValueError:
    sys.exit(f'error: --batches must be integers, got {",".join(_BATCHES.value)}')
  args = types.SimpleNamespace(
      official=_OFFICIAL.value, out=_OUT.value, size=_SIZE.value, sections=_SECTIONS.value,
      precisions=_PRECISIONS.value, batches=batches, teacher_steps=_TEACHER_STEPS.value,
      runs=_RUNS.value, warmup=_WARMUP.value, device=_DEVICE.value, budget_s=_BUDGET_S.value)
  ref = Reference(args)
  failed = 0
  for section in args.sections:
    t0 = time.perf_counter()
    try:
      ref.run(section)
    except Exception as e:  # pylint: disable=broad-except
      failed += 1
      traceback.print_exc()
      ref.record(section, 'failed', error=f'{type(e).__name__}: {e}'[:500])
    print(f'## official {section} done in {time.perf_counter() - t0:.1f} s', flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  app.run(main)

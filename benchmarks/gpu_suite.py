r"""Official-size benchmark suite on one accelerator: generation latency and throughput, the
teacher sampler, video-to-audio, the teacher train step and both distillation steps.

  python -m benchmarks.gpu_suite --out DIR [--size official|micro] [--sections t2a,ablations,...]
      [--runs 20] [--warmup 3] [--cache_dir .jax_cache] [--budget_s 0]
  python -m benchmarks.gpu_suite --report DIR     # ours.json + official.json -> one table

Random weights at `configs/official.py` sizes (latency does not depend on the values), created
on the device by one jitted init: nothing is downloaded and no full-size tree is ever built on
the host. The byte tokenizer stands in for T5's vocabulary at the same 128-token length.

Timing: each setting runs once untimed (`first_s`: compilation + one run; compiles are
persistent-cached under --cache_dir, so a rerun mostly loads them), `--warmup` more untimed,
then `--runs` timed calls, each ending with the waveform on the host (or, for training steps,
`block_until_ready` on the new state). Rows give the median and p90 in milliseconds.

End to end (T2A, V2A) means: tokenize on the host -> T5 -> [CLIP + video conditioner] -> MAF ->
sampler -> VAE decode -> crop -> waveform copied to the host, with a prompt not seen before
(the T5 cache misses) unless the variant says 'cached prompt'. Every variant but 'generator-*'
is `axturbo.generation.serving.Pipeline`; 'generator-*' is
`axturbo.generation.generate.Generator` (stage by stage).

Floors (`floor_ms`, bf16 rows): per stage max(FLOPs / 790 TFLOP/s, weight bytes / 4.3 TB/s)
(the bf16 matrix rate and copy bandwidth measured on this H200 kind, see docs/benchmarks.md),
FLOPs counted analytically (2 x kernel size per position, attention 4 L^2 D, the Oobleck
convolutions layer by layer). `x_floor` = median / floor.

Rows are merged into DIR/ours.json after every setting (a run that stops early keeps what it
measured); the last thing printed is the table. `--size micro` shrinks every tower (CPU test).
"""
import functools
import json
import math
import os
import pathlib
import statistics
import sys
import time
import traceback
import types

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

SECTIONS = ('t2a', 'ablations', 'throughput', 'teacher', 'v2a', 'train', 'distill', 'aot')
PEAK_BF16 = 790e12      # measured bf16 matmul rate of the H200 kind (KINDS.md)
DATASHEET_BF16 = 989e12  # H100/H200 SXM dense bf16, the MFU denominator of configs/official.py
BANDWIDTH = 4.3e12      # measured device-to-device copy bandwidth (KINDS.md)
PROMPT = 'A dog barks twice, then a bell rings over distant traffic.'


# ------------------------------------------------------------------------------- configs

def micro_model_config():
  """configs/official.py's model with every tower shrunk (Oobleck codec kept): the CPU test."""
  from configs import micro, official
  m = micro.shrink_towers(official.model_config(), io_channels=8)
  m.audio_samples = m.prompt_samples = 512      # Oobleck hop 4 x 8: 16 latent frames
  m.vae.update(channels=4, c_mults=(1, 2), strides=(4, 8), latent_dim=8)
  m.text.update(tokenizer='byte')
  m.t5.update(vocab_size=259)
  m.disc.update(num_heads=2, hidden=8)
  del m.synchformer   # no extractor: its 10 s of frames would not fit 2 video frames
  return m


def load_config(size: str):
  from configs import official
  c = official.get_config()
  c.mesh.activation_constraints = False   # one device: nothing to shard
  c.mesh.shape = (1, -1, 1)
  if size == 'micro':
    c.model = micro_model_config()
    c.distill.disc_num_blocks = c.model.disc.num_heads
  elif size != 'official':
    raise ValueError(f"--size must be 'official' or 'micro', got {size!r}")
  return c


# ------------------------------------------------------------------------------- FLOPs

def _kernels(tree, skip=()) -> int:
  """Values in the leaves named 'kernel' whose path mentions none of `skip`."""
  import jax
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = [str(getattr(k, 'key', k)) for k in path]
    if keys[-1] == 'kernel' and not any(s in keys for s in skip):
      total += math.prod(leaf.shape)
  return total


def _bytes(tree, itemsize: int) -> int:
  import jax
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree)) * itemsize


def oobleck_flops(vae, num_samples: int, part: str) -> float:
  """Convolution FLOPs of the Oobleck encoder ('encode', `num_samples` in) or decoder
  ('decode', `num_samples` out) for one clip, layer by layer (kernel 7 residual convs and
  their kernel 1 twins, strided / transposed kernel 2s convs, the in/out convs)."""
  widths = [vae.channels] + [vae.channels * c for c in vae.c_mults]
  n, flops = num_samples, 0.0
  res_unit = lambda c, length: 2 * length * (7 * c * c + c * c)
  if part == 'encode':
    flops += 2 * n * 7 * vae.in_channels * widths[0]
    for i, s in enumerate(vae.strides):
      flops += 3 * res_unit(widths[i], n)
      n //= s
      flops += 2 * n * 2 * s * widths[i] * widths[i + 1]
    return flops + 2 * n * 3 * widths[-1] * 2 * vae.latent_dim
  frames = num_samples // math.prod(vae.strides)
  flops += 2 * frames * 7 * vae.latent_dim * widths[-1]
  n = frames
  for i, s in reversed(list(enumerate(vae.strides))):
    flops += 2 * n * 2 * s * widths[i + 1] * widths[i]   # transposed conv, per input position
    n *= s
    flops += 3 * res_unit(widths[i], n)
  return flops + 2 * n * 7 * widths[0] * vae.out_channels


def _attention(batch, length, dim, layers) -> float:
  return 4.0 * batch * length * length * dim * layers


def stage_costs(m, params, batch: int, *, steps: int, cfg: bool, video: bool
                ) -> dict[str, tuple[float, float, int]]:
  """{stage: (FLOPs of all calls, bf16 weight bytes read per call, calls)} of one generation
  request of `batch` clips."""
  t = m.trunk
  length = t.seq_len + 1
  rows = batch * (2 if cfg else 1)
  per_pos = _kernels(params['trunk'], skip=('time_value', 'time_embed_0', 'time_embed_1',
                                            'cond_proj', 'cond_resample'))
  trunk = (2.0 * rows * length * per_pos + _attention(rows, length, t.embed_dim, t.depth)
           + 2.0 * rows * t.cond_len * _kernels(params['trunk']['cond_proj'])
           + 2.0 * rows * t.embed_dim * _kernels(params['trunk']['cond_resample']))
  text_len = m.text.max_length
  out = {
      't5': (2.0 * batch * text_len * _kernels(params['text'])
             + _attention(batch, text_len, m.t5.d_model, m.t5.num_layers),
             _bytes(params['text'], 2), 1),
      'maf': (2.0 * batch * t.cond_len * _kernels(params['maf']), _bytes(params['maf'], 2), 1),
      'trunk': (steps * trunk, _bytes(params['trunk'], 2), steps),
  }
  if 'vae' in params:
    samples = t.seq_len * math.prod(m.vae.strides)
    out['decode'] = (batch * oobleck_flops(m.vae, samples, 'decode'),
                     _bytes(params['vae'], 4) // 2, 1)
  if video:
    v, c = m.video, m.clip
    clip_tokens = v.num_frames * v.tokens_per_frame
    own = _kernels(params['video'], skip=('proj', 'proj_sync'))
    out['clip'] = (
        2.0 * batch * clip_tokens * _kernels(params['clip'])
        + _attention(batch * v.num_frames, v.tokens_per_frame, c.hidden_size, c.num_layers),
        _bytes(params['clip'], 2), 1)
    out['video'] = (
        2.0 * batch * clip_tokens * own
        + _attention(batch * v.tokens_per_frame, v.num_frames, v.heads * v.dim_head, v.depth)
        + 2.0 * batch * v.dim * (_kernels(params['video']['proj'])
                                 + _kernels(params['video']['proj_sync'])),
        _bytes(params['video'], 2), 1)
  return out


def floor_ms(costs: dict) -> float:
  """Sum over stages of calls x max(FLOPs / peak, bytes / bandwidth), in ms."""
  return 1e3 * sum(calls * max(f / calls / PEAK_BF16, b / BANDWIDTH)
                   for f, b, calls in costs.values())


def train_flops(m, params, batch: int, trainable) -> float:
  """Model FLOPs of one teacher step: 3x forward for the trained towers, 1x for frozen ones."""
  costs = stage_costs(m, params, batch, steps=1, cfg=False, video=True)
  grad = ('maf', 'trunk', 'video') if 'video' in trainable else ('maf', 'trunk')
  flops = sum(3 * costs[k][0] if k in grad else costs[k][0] for k in costs if k != 'decode')
  if 'vae' in params:
    flops += batch * (oobleck_flops(m.vae, m.audio_samples, 'encode')
                      + oobleck_flops(m.vae, m.prompt_samples, 'encode'))
  return flops


# ------------------------------------------------------------------------------- timing

def time_calls(fn, runs: int, warmup: int, sync=lambda: None) -> dict:
  """First call (compile + run), `warmup` untimed calls, then `runs` timed ones (ms).

  `sync()` waits for work still queued on the device after the first call and after the
  warm-up (torch's CUDA calls return early); `fn` itself must end with its result on the host
  or blocked on, as each of ours does.
  """
  t0 = time.perf_counter()
  fn(0)
  sync()
  first = time.perf_counter() - t0
  for i in range(warmup):
    fn(1 + i)
  sync()
  samples = []
  for i in range(runs):
    t0 = time.perf_counter()
    fn(1 + warmup + i)
    samples.append(1e3 * (time.perf_counter() - t0))
  samples.sort()
  p90 = samples[min(len(samples) - 1, math.ceil(0.9 * len(samples)) - 1)]
  return {'median_ms': statistics.median(samples), 'p90_ms': p90, 'min_ms': samples[0],
          'runs': runs, 'first_s': first}


def rel_err(a, b) -> float:
  """||a - b|| / ||b|| in float64 on the host."""
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class Suite:
  """Runs sections in order, merging each row into out/ours.json as soon as it is measured."""

  def __init__(self, args):
    import jax
    self.args = args
    self.config = load_config(args.size)
    self.m = self.config.model
    self.gpu = jax.default_backend() == 'gpu'
    self.attention = 'cudnn' if self.gpu else None
    self.out = pathlib.Path(args.out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.rows = _load(self.out / 'ours.json')
    self.t_start = time.perf_counter()
    self._fast, self.fast_out, self.fp32_out = None, None, None
    # What an earlier 't2a' run into the same --out picked (loop form, cuDNN attention usable).
    seen = {r['variant']: r for r in self.rows if r['section'] == 't2a'}
    picked = seen.get('fast bf16: the faster trunk loop', {}).get('variant_used', '')
    self.unroll = {'yes': True, 'no': False}.get(args.unroll_layers, 'unrolled' in picked)
    if any('cuDNN attention failed' in v for v in seen):
      self.attention = None
    self._params = None
    dev = jax.devices()[0]
    self.device = f'{dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}'
    print(f'# {self.device}; size {args.size}', flush=True)

  @property
  def params(self):
    """Random weights made on the device by one jitted init (on first use)."""
    if self._params is None:
      import flax.linen as nn
      import jax
      from axturbo.models import audiox
      model = audiox.build_model(self.m)
      t0 = time.perf_counter()
      self._params = jax.block_until_ready(jax.jit(
          lambda k: nn.unbox(audiox.init_params(model, self.m, k)))(jax.random.PRNGKey(0)))
      print(f'# random init {time.perf_counter() - t0:.1f} s', flush=True)
    return self._params

  def abstract_params(self):
    import flax.linen as nn
    import jax
    from axturbo.models import audiox
    model = audiox.build_model(self.m)
    return jax.eval_shape(lambda: nn.unbox(audiox.init_params(model, self.m,
                                                              jax.random.PRNGKey(0))))

  # ----------------------------------------------------------------------------- helpers

  def record(self, section: str, variant: str, **row) -> dict:
    row = {'impl': 'ours', 'section': section, 'variant': variant, 'device': self.device,
           'size': self.args.size, **row}
    self.rows = [r for r in self.rows if (r['section'], r['variant']) != (section, variant)]
    self.rows.append(row)
    _dump(self.out / 'ours.json', self.rows)
    ms = row.get('median_ms')
    print(f'  {section:10s} {variant:36s} ' + (f'median {ms:9.2f} ms  p90 {row["p90_ms"]:9.2f}  '
          f'first {row["first_s"]:6.1f} s' if ms is not None else str(row.get('error', ''))[:160]),
          flush=True)
    return row

  def over_budget(self) -> bool:
    return bool(self.args.budget_s) and time.perf_counter() - self.t_start > self.args.budget_s

  def pipeline(self, **kw):
    from axturbo.data import tokenizers
    from axturbo.generation import serving
    kw.setdefault('attention_impl', self.attention)
    return serving.Pipeline(self.m, self.params,
                            tokenizer=tokenizers.offline_tokenizer(self.m.text), **kw)

  def _floor(self, batch, steps=4, cfg=False, video=False) -> float:
    return floor_ms(stage_costs(self.m, self.params, batch, steps=steps, cfg=cfg, video=video))

  def time_pipeline(self, section, variant, pipe, *, batch=1, cached=False, floor=True,
                    video=None, **gen) -> tuple[dict, tuple]:
    """Times pipe end to end; returns (row, (waveform, latents) of the first call)."""
    import jax
    import numpy as np
    from axturbo.generation import SamplerOptions
    first = {}
    frames = None
    if video is not None:
      rng = np.random.default_rng(0)
      frames = rng.integers(0, 256, (batch,) + video, dtype=np.uint8)

    def call(i):
      texts = [PROMPT if cached else f'{PROMPT} #{i}.{j}' for j in range(batch)]
      vt = None if frames is None else pipe.video_tokens(frames)
      wave, lat = pipe.generate_arrays(texts, video_tokens=vt,
                                       options=SamplerOptions(seed=0, **gen))
      wave = np.asarray(wave)   # the waveform on the host ends every timed call
      if not first:
        first['out'] = (wave, np.asarray(jax.device_get(lat)))

    stats = time_calls(call, self.args.runs, self.args.warmup)
    steps = gen.get('steps', 4)
    nfe = steps * (2 if gen.get('sampler') == 'teacher' else 1)
    row = dict(batch=batch, nfe=nfe, precision=pipe.config.dtype, **stats,
               clips_per_s=1e3 * batch / stats['median_ms'])
    if floor and pipe.config.dtype == 'bfloat16':
      row['floor_ms'] = self._floor(batch, steps=steps, cfg=gen.get('sampler') == 'teacher',
                                    video=video is not None)
      row['x_floor'] = stats['median_ms'] / row['floor_ms']
    return self.record(section, variant, **row), first['out']

  # ----------------------------------------------------------------------------- sections

  def fast(self):
    """The fast bf16 pipeline, shared by the sections (its weights and compiles are reused)."""
    if self._fast is None:
      self._fast = self.pipeline(dtype='bfloat16', unroll_layers=self.unroll)
    return self._fast

  def t2a(self):
    """The headline: text-to-audio, batch 1, student 4 steps, end to end.

    The trunk's block loop scanned and unrolled are both timed; the faster one serves the
    other sections. If the cuDNN attention kernel cannot be built, XLA's attention is used.
    """
    best = None
    for unroll in (False, True):
      name = 'fast bf16' + (', layers unrolled' if unroll else '')
      try:
        pipe = self.pipeline(dtype='bfloat16', unroll_layers=unroll)
        row, out = self.time_pipeline('t2a', name, pipe)
      except Exception as e:  # pylint: disable=broad-except
        if self.attention is None:
          raise
        traceback.print_exc()
        self.record('t2a', f'{name}: cuDNN attention failed', error=f'{type(e).__name__}: {e}'[:500])
        self.attention = None
        pipe = self.pipeline(dtype='bfloat16', unroll_layers=unroll)
        row, out = self.time_pipeline('t2a', name + ', XLA attention', pipe)
      if best is None or row['median_ms'] < best[0]['median_ms']:
        best = (row, out, pipe, unroll)
      del pipe
    row, self.fast_out, self._fast, self.unroll = best
    del best
    self.record('t2a', 'fast bf16: the faster trunk loop', variant_used=row['variant'])
    self.time_pipeline('t2a', 'fast bf16, cached prompt', self.fast(), cached=True)
    exact = self.pipeline(dtype='float32', attention_impl=None, matmul_precision='highest',
                          unroll_layers=self.unroll)
    _, self.fp32_out = self.time_pipeline('t2a', 'fast fp32 (highest)', exact)
    del exact
    self.record('t2a', 'error: fast bf16 vs fp32',
                latents_rel_err=rel_err(self.fast_out[1], self.fp32_out[1]),
                wave_rel_err=rel_err(self.fast_out[0], self.fp32_out[0]))

  def ablations(self):
    """What each change buys, T2A batch 1, student 4 steps."""
    import numpy as np
    from axturbo.data import tokenizers
    from axturbo.generation import generate
    from axturbo.generation import Request, SamplerOptions
    for dtype in ('float32', 'bfloat16'):
      m = self.m.copy_and_resolve_references()
      m.dtype = dtype
      gen = generate.Generator(m, self.params, kind='student',
                               tokenizer=tokenizers.offline_tokenizer(m.text))
      stages = []

      def call(i, gen=gen, stages=stages):
        [res] = gen.generate(Request(text=f'{PROMPT} #{i}'), SamplerOptions(seed=0))
        stages.append(res.meta['latency_s'])
      stats = time_calls(call, self.args.runs, self.args.warmup)
      timed = stages[-self.args.runs:]
      per_stage = {f'{k}_ms': 1e3 * statistics.median(s[k] for s in timed)
                   for k in ('conditioning_s', 'sampling_s', 'decoding_s')}
      self.record('ablations', f'generator {dtype} (stage by stage)', batch=1, nfe=4,
                  precision=dtype, **stats, **per_stage)
      del gen
    variants = (('fast bf16, float32 weights', dict(dtype='bfloat16', weights_dtype='float32')),
                ('fast bf16, XLA attention', dict(dtype='bfloat16', attention_impl=None)),
                ('fast bf16, bf16 decode', dict(dtype='bfloat16', decode_dtype='bfloat16')))
    outs = {}
    for name, kw in variants:
      pipe = self.pipeline(unroll_layers=self.unroll, **kw)
      _, outs[name] = self.time_pipeline('ablations', name, pipe)
      del pipe
    if self.fast_out is None:   # the first call of 't2a' / 'fast bf16': same prompt and seed
      wave, lat = self.fast().generate_arrays(f'{PROMPT} #0.0', seed=0)
      self.fast_out = (np.asarray(wave), np.asarray(lat))
    wave, lat = self.fast_out
    if self.attention is not None:
      self.attention_check()
    x_wave, x_lat = outs['fast bf16, XLA attention']
    self.record('ablations', 'error: cuDNN vs XLA attention (bf16)',
                latents_rel_err=rel_err(lat, x_lat), wave_rel_err=rel_err(wave, x_wave))
    d_wave, d_lat = outs['fast bf16, bf16 decode']
    self.record('ablations', 'error: bf16 vs fp32 decode (same latents)',
                latents_rel_err=rel_err(d_lat, lat), wave_rel_err=rel_err(d_wave, wave))
    if self.fp32_out is not None:
      self.record('ablations', 'error: bf16 decode pipeline vs fp32 pipeline',
                  latents_rel_err=rel_err(d_lat, self.fp32_out[1]),
                  wave_rel_err=rel_err(d_wave, self.fp32_out[0]))

  def attention_check(self):
    """cuDNN vs XLA attention on one trunk-shaped call (bf16 inputs, float32 reference)."""
    import jax
    import jax.numpy as jnp
    t = self.m.trunk
    shape = (1, t.seq_len + 1, t.num_heads, t.head_dim)
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), shape, jnp.bfloat16) for i in range(3))
    attend = lambda impl, dt: jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q.astype(dt), k.astype(dt), v.astype(dt), implementation=impl).astype(jnp.float32))
    ref = attend(None, jnp.float32)(q, k, v)
    for impl in ('cudnn', None):
      out = attend(impl, jnp.bfloat16)(q, k, v)
      self.record('ablations', f'error: {impl or "XLA"} attention (bf16) vs float32, one call',
                  max_abs_err=float(jnp.max(jnp.abs(out - ref))), wave_rel_err=rel_err(out, ref))

  def throughput(self):
    for b in self.args.batches:
      if self.over_budget():
        break
      self.time_pipeline('throughput', f'fast bf16, batch {b}', self.fast(), batch=b)

  def teacher(self):
    steps = self.args.teacher_steps
    self.time_pipeline('teacher', f'fast bf16, {steps} Euler steps, CFG 6', self.fast(),
                       sampler='teacher', steps=steps, cfg_scale=6.0)

  def v2a(self):
    v, c = self.m.video, self.m.clip
    self.time_pipeline('v2a', f'fast bf16, CLIP on {v.num_frames} frames', self.fast(),
                       video=(v.num_frames, c.image_size, c.image_size, 3))

  def aot(self):
    """Ahead-of-time costs of the serving executables for shapes only (no weights made):
    XLA's cost_analysis() (FLOPs, bytes accessed; a loop body counts once) and memory next
    to the analytic FLOPs and floor. Runs on any backend (the no-GPU fallback)."""
    import jax
    import jax.numpy as jnp
    from axturbo.data import tokenizers
    from axturbo.generation import serving
    from axturbo.models import audiox
    abstract = self.abstract_params()
    m = self.m
    pipe = serving.Pipeline(m, abstract, dtype='bfloat16', unroll_layers=True,
                            attention_impl=self.attention,
                            tokenizer=tokenizers.offline_tokenizer(m.text))
    costs = stage_costs(m, abstract, 1, steps=4, cfg=False, video=True)
    sds = jax.ShapeDtypeStruct
    bf16 = jnp.bfloat16
    velocity = jax.jit(lambda p, z, t, c: pipe.model.apply({'params': p}, z, t, c,
                                                           method='velocity'))
    decode = jax.jit(lambda p, z: pipe.decoder.apply({'params': p}, z, method='decode'))
    t = m.trunk
    stages = (
        ('T5 encoder, batch 1', 't5', lambda: pipe.lower_text(1)),
        ('CLIP + video conditioner, batch 1', ('clip', 'video'), lambda: pipe.lower_video(1)),
        ('trunk, one velocity call, batch 1 (layers unrolled)', 'trunk', lambda: velocity.lower(
            {'trunk': pipe.params['trunk']}, sds((1, t.seq_len, t.io_channels), jnp.float32),
            sds((1,), jnp.float32), sds((1, t.cond_len, t.cond_dim), bf16))),
        ('VAE decode, batch 1 (float32)', 'decode', lambda: decode.lower(
            pipe.params.get('vae', {}), sds((1, t.seq_len, t.io_channels), jnp.float32))),
        ('fused T2A executable, batch 1 (MAF + 4 steps + decode)', None,
         lambda: pipe.lower_generate(1)),
    )
    for name, key, lower in stages:
      if self.over_budget():
        break
      t0 = time.perf_counter()
      compiled = lower().compile()
      row = dict(compile_s=time.perf_counter() - t0, **aot_costs(compiled))
      if isinstance(key, tuple):   # stages timed as one executable
        costs[key] = tuple(sum(costs[k][i] for k in key) for i in range(2)) + (1,)
      if key is not None:
        flops, nbytes, calls = costs[key]
        row.update(analytic_tflop=flops / calls / 1e12, weight_gbytes=nbytes / 1e9,
                   floor_ms=1e3 * max(flops / calls / PEAK_BF16, nbytes / BANDWIDTH))
      else:
        row.update(analytic_tflop=(costs['maf'][0] + costs['trunk'][0] + costs['decode'][0])
                   / 1e12, floor_ms=floor_ms({k: costs[k] for k in ('maf', 'trunk', 'decode')}))
      self.record('aot', name, **row)
    for name, batch, kw in (('T2A request, batch 1', 1, {}), ('T2A request, batch 32', 32, {}),
                            ('teacher request, 50 steps CFG 6, batch 1', 1,
                             dict(steps=50, cfg=True)),
                            ('V2A request, batch 1', 1, dict(video=True))):
      c = stage_costs(m, abstract, batch, **{'steps': 4, 'cfg': False, 'video': False, **kw})
      self.record('aot', f'analytic: {name}', batch=batch,
                  analytic_tflop=sum(f for f, _, _ in c.values()) / 1e12,
                  floor_ms=floor_ms(c), floor_clips_per_s=1e3 * batch / floor_ms(c))

  def train(self):
    """The teacher train step (train.py's jitted step) at --train_batch, bf16 compute."""
    import jax
    from axturbo.models import audiox
    from axturbo.runtime import optim, sharding
    from axturbo.train import state as state_lib, step as train_step_lib
    self._fast = None   # frees the bf16 inference weights
    config = self.config.copy_and_resolve_references()
    config.model.dtype = 'bfloat16'
    config.model.trunk.remat_policy = self.args.remat
    mesh = sharding.make_mesh((1, -1, 1))
    rules = sharding.mesh_rules(config.mesh)
    model = audiox.build_model(config.model)
    tx = optim.make_optimizer(config.train.optim, config.train.total_steps)
    init_fn = state_lib.make_init_fn(model, config, tx)
    abstract, shardings = state_lib.abstract_state(init_fn, mesh, rules)
    state = state_lib.init_state(init_fn, mesh, 0, rules)
    b = self.args.train_batch
    batch = sharding.global_batch(random_batch(config.model, b), mesh)
    jitted = train_step_lib.jit_train_step(model, tx, config, mesh, shardings)
    t0 = time.perf_counter()
    compiled = sharding.compile_step(jitted, abstract, sharding.abstract_batch(
        random_batch(config.model, b), mesh), mesh, rules)
    compile_s = time.perf_counter() - t0
    mem = memory(compiled)
    box = {'state': state}

    def call(i):
      box['state'], metrics = compiled(box['state'], batch)
      jax.block_until_ready(metrics['loss'])
    stats = time_calls(call, self.args.train_runs, 1)
    flops = train_flops(config.model, self.params, b, config.train.trainable)
    secs = stats['median_ms'] / 1e3
    self.record('train', f'teacher step, batch {b}, remat {self.args.remat}', batch=b,
                precision='bfloat16', **stats, compile_s=compile_s, **mem,
                model_tflop=flops / 1e12, mfu_datasheet=flops / secs / DATASHEET_BF16,
                mfu_measured_peak=flops / secs / PEAK_BF16)
    del box, state, compiled

  def distill(self):
    """distill.py's student step (with its conditioner inputs) and fake + D step."""
    import flax.linen as nn
    import jax
    from axturbo.runtime import sharding
    from axturbo.distill import state as state_lib, step as step_lib
    from axturbo.models import audiox
    config = self.config.copy_and_resolve_references()
    config.model.dtype = 'bfloat16'
    config.model.trunk.remat_policy = self.args.remat
    d = config.distill
    mesh = sharding.make_mesh((1, -1, 1))
    rules = sharding.mesh_rules(config.mesh)
    model = audiox.build_model(config.model)
    boxed = state_lib.abstract_params(model, config.model)
    t_shard = sharding.logical_shardings(boxed, mesh, rules)
    teacher = self.params
    txs = step_lib.make_optimizers(d)
    init_fn = state_lib.make_init_fn(model, config, *txs)
    abstract, shardings = state_lib.abstract_state(init_fn, model, config, mesh, rules)
    state = jax.jit(lambda r, t: nn.unbox(init_fn(r, t)), out_shardings=shardings)(
        jax.random.key(0), state_lib.trainable_part(teacher, d))
    b = self.args.distill_batch
    local = random_batch(config.model, b)
    jitted = step_lib.jit_steps(model, txs, config, mesh, shardings, t_shard)
    t0 = time.perf_counter()
    plan = {('student', True), ('fake', True)}
    compiled = step_lib.compile_steps(jitted, plan, abstract, teacher,
                                      sharding.abstract_batch(local, mesh), mesh, rules)
    compile_s = time.perf_counter() - t0
    batch = sharding.global_batch(local, mesh)
    box = {'state': state}
    inputs = compiled['inputs'](state, teacher, batch)
    for kind in ('student', 'fake'):
      if self.over_budget():
        break

      def call(i, kind=kind):
        box['state'], metrics = compiled[(kind, True)](box['state'], teacher, inputs)
        jax.block_until_ready(jax.tree.leaves(metrics))
      stats = time_calls(call, self.args.train_runs, 1)
      self.record('distill', f'{kind} step, batch {b}', batch=b, precision='bfloat16', **stats,
                  compile_s=compile_s, **memory(compiled[(kind, True)]))
    inputs_stats = time_calls(lambda i: jax.block_until_ready(
        compiled['inputs'](box['state'], teacher, batch)), self.args.train_runs, 1)
    self.record('distill', f'conditioner inputs, batch {b}', batch=b, precision='bfloat16',
                **inputs_stats)
    del box, state, compiled, inputs


def aot_costs(compiled) -> dict:
  """XLA's FLOPs / bytes accessed (cost_analysis) and memory of a compiled executable."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  row = {'xla_tflop': cost.get('flops', 0.0) / 1e12,
         'xla_gbytes': cost.get('bytes accessed', 0.0) / 1e9}
  row.update(memory(compiled))
  return row


def random_batch(m, b: int) -> dict:
  """A training batch of `b` random rows with `axturbo.data.pipeline`'s keys and dtypes."""
  import numpy as np
  rng = np.random.default_rng(0)
  s = m.clip.image_size
  ids = rng.integers(3, 259, (b, m.text.max_length), dtype=np.int32)
  return {
      'audio': 0.1 * rng.standard_normal((b, m.audio_samples, 2), np.float32),
      'prompt': 0.1 * rng.standard_normal((b, m.prompt_samples, 2), np.float32),
      'frames': rng.integers(0, 256, (b, m.video.num_frames, s, s, 3), dtype=np.uint8),
      'sync': rng.standard_normal((b, m.video.sync_len, m.video.sync_dim), np.float32),
      'task': np.zeros((b,), np.int32),
      'input_ids': ids,
      'attention_mask': np.ones((b, m.text.max_length), np.int32),
      'valid': np.ones((b,), bool),
  }


def memory(compiled) -> dict:
  """Per-device sizes from XLA's memory analysis of a compiled step (GiB)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  gib = lambda n: n / 2**30
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  return {'args_gib': gib(mem.argument_size_in_bytes), 'temp_gib': gib(mem.temp_size_in_bytes),
          'peak_gib': gib(peak)}


# ------------------------------------------------------------------------------- JSON, table

def _load(path: pathlib.Path) -> list:
  return json.loads(path.read_text()) if path.is_file() else []


def _dump(path: pathlib.Path, rows: list) -> None:
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(rows, indent=1))
  tmp.replace(path)


def _fmt(x, spec):
  return '' if x is None else format(x, spec)


def format_table(rows: list) -> str:
  """Markdown: one line per timed row, then the error rows."""
  head = ('| section | impl | variant | batch | NFE | median ms | p90 ms | first call s '
          '| clips/s | floor ms | x floor |')
  lines = [head, '|' + '---|' * 11]
  timed = [r for r in rows if 'median_ms' in r]
  order = {s: i for i, s in enumerate(SECTIONS)}
  timed.sort(key=lambda r: (order.get(r['section'], 99), r['impl'] != 'ours'))
  for r in timed:
    lines.append(
        f"| {r['section']} | {r['impl']} | {r['variant']} | {r.get('batch', '')} "
        f"| {r.get('nfe', '')} | {_fmt(r['median_ms'], '.2f')} | {_fmt(r['p90_ms'], '.2f')} "
        f"| {_fmt(r.get('first_s'), '.1f')} | {_fmt(r.get('clips_per_s'), '.2f')} "
        f"| {_fmt(r.get('floor_ms'), '.2f')} | {_fmt(r.get('x_floor'), '.2f')} |")
  extra = []
  for r in rows:
    keys = [k for k in ('latents_rel_err', 'wave_rel_err', 'mfu_datasheet', 'mfu_measured_peak',
                        'model_tflop', 'compile_s', 'peak_gib', 'conditioning_ms', 'sampling_ms',
                        'decoding_ms', 'variant_used', 'max_abs_err', 'xla_tflop',
                        'xla_gbytes', 'analytic_tflop', 'weight_gbytes', 'temp_gib', 'floor_ms',
                        'floor_clips_per_s', 'error')
            if k in r and not (k == 'floor_ms' and 'median_ms' in r)]
    if keys:
      vals = ', '.join(f'{k} {r[k]:.4g}' if isinstance(r[k], float) else f'{k} {r[k]}'
                       for k in keys)
      extra.append(f"- {r['impl']} {r['section']} / {r['variant']}: {vals}")
  return '\n'.join(lines + [''] + extra)


def report(directory) -> str:
  d = pathlib.Path(directory)
  rows = _load(d / 'ours.json') + _load(d / 'official.json')
  return format_table(rows)


# ------------------------------------------------------------------------------- main

def define_flags(fv: flags.FlagValues) -> list[flags.FlagHolder]:
  """This program's flags, defined in `fv`.

  Only `python -m benchmarks.gpu_suite` defines them (in flags.FLAGS): tests and
  benchmarks/official_reference.py import this module, and importing it defines no flag.
  """
  return [
      flags.DEFINE_string('out', None, 'Directory of ours.json (rows are merged into it).',
                          flag_values=fv),
      flags.DEFINE_string('report', None,
                          'Print the table of DIR/ours.json + DIR/official.json.',
                          flag_values=fv),
      flags.DEFINE_enum('size', 'official', ['official', 'micro'], 'Model size.', flag_values=fv),
      flags.DEFINE_list('sections', list(SECTIONS[:-1]),
                        f'Comma-separated, from {",".join(SECTIONS)} (default: all but aot).',
                        flag_values=fv),
      flags.DEFINE_integer('runs', 20, 'Timed calls per setting.', flag_values=fv),
      flags.DEFINE_integer('warmup', 3, 'Untimed calls per setting after the first.',
                           flag_values=fv),
      flags.DEFINE_integer('train_runs', 10, 'Timed train / distillation steps.', flag_values=fv),
      flags.DEFINE_list('batches', ['8', '32'], 'Throughput batch sizes.', flag_values=fv),
      flags.DEFINE_integer('teacher_steps', 50, 'Euler steps (NFE = 2x).', flag_values=fv),
      flags.DEFINE_integer('train_batch', 8, 'Batch of the teacher train step.', flag_values=fv),
      flags.DEFINE_integer('distill_batch', 4, 'Batch of the distillation steps.',
                           flag_values=fv),
      flags.DEFINE_string('remat', 'none', 'Trunk remat policy of the train steps.',
                          flag_values=fv),
      flags.DEFINE_enum('unroll_layers', 'auto', ['auto', 'yes', 'no'],
                        "Trunk loop of the fast pipeline outside 't2a' (which times both and "
                        "picks); 'auto': what a 't2a' run recorded in --out, else scanned.",
                        flag_values=fv),
      flags.DEFINE_string('cache_dir', '', 'Persistent compilation cache ("" = none).',
                          flag_values=fv),
      flags.DEFINE_float('budget_s', 0, 'Skip the remaining sections after this many seconds '
                         '(0 = no limit).', flag_values=fv),
  ]


def args_from(holders: list[flags.FlagHolder]) -> types.SimpleNamespace:
  """The parsed flags as the Suite's arguments; exits with one line on a bad value."""
  args = types.SimpleNamespace(**{h.name: h.value for h in holders})
  bad = set(args.sections) - set(SECTIONS)
  if bad:
    sys.exit(f'error: --sections: unknown {sorted(bad)}; choose from {SECTIONS}')
  try:
    args.batches = [int(x) for x in args.batches]
  except ValueError:
    sys.exit(f'error: --batches must be comma-separated integers, got {",".join(args.batches)}')
  if not args.report and not args.out:
    sys.exit('error: give --out DIR (or --report DIR)')
  return args


def parse_args(argv: list[str]) -> types.SimpleNamespace:
  """`argv` (flags only, no program name) parsed in flags of its own (tests)."""
  fv = flags.FlagValues()
  holders = define_flags(fv)
  fv(['gpu_suite', *argv])
  return args_from(holders)


def main(argv: list[str], holders: list[flags.FlagHolder]) -> int:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  return run(args_from(holders))


def run(args: types.SimpleNamespace) -> int:
  """The suite (or --report's table); 1 if a section failed."""
  if args.report:
    print(report(args.report))
    return 0
  import jax
  if args.cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.abspath(args.cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  suite = Suite(args)
  failed = 0
  for name in args.sections:
    if suite.over_budget():
      suite.record(name, 'skipped', error=f'--budget_s {args.budget_s} reached')
      continue
    t0 = time.perf_counter()
    suite.rows = [r for r in suite.rows
                  if not (r['section'] == name and r['variant'] in ('failed', 'skipped'))]
    print(f'## {name}', flush=True)
    try:
      getattr(suite, name)()
    except Exception as e:  # pylint: disable=broad-except
      failed += 1
      traceback.print_exc()
      suite.record(name, 'failed', error=f'{type(e).__name__}: {e}'[:500])
    print(f'## {name} done in {time.perf_counter() - t0:.1f} s', flush=True)
  print(format_table(suite.rows + _load(suite.out / 'official.json')))
  return 1 if failed else 0


if __name__ == '__main__':
  app.run(functools.partial(main, holders=define_flags(flags.FLAGS)))

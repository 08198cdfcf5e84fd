"""Reference-set metrics (FD, KL, IS with PANNs CNN14) for clips listed in an official manifest.

Every manifest line (`axturbo.data.manifest` format) is one reference clip: its first window's
caption (and its video / sync features / audio prompt for video- or audio-conditioned `type`s)
conditions one generation; the reference audio is the file's first `output_samples` at the model
rate (zero-padded). Both sets go through CNN14 (mono, resampled to the checkpoint's rate):
  FD   Frechet distance between Gaussians fitted to the 2048-d embeddings (lower is better).
  KL   mean over paired clips of KL(p_ref || p_gen) of the 527 AudioSet posteriors, per-class
       sigmoid ('kl_sigmoid', the paper's) and softmax ('kl_softmax').
  IS   Inception Score of the generated clips' softmax posteriors (10 splits, or fewer with fewer
       clips; shuffle seed 2020 as the AudioLDM toolbox). Mean and std over splits.
"""
import json
from typing import Callable, Sequence

import jax
import numpy as np

from axturbo.data import audio_io
from axturbo.data import manifest
from axturbo.data import tasks as data_tasks
from axturbo.eval import benchmark
from axturbo.eval import cnn14
from axturbo.eval import cnn14_weights
from axturbo.eval import metrics

# embed_fn((B, N, 2) waveforms at the model rate) -> ((B, D) embeddings, (B, K) logits).
EmbedFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
_VIDEO_TASKS = (1, 2, 6)
_PROMPT_TASKS = (5, 6)


def load_references(manifest_path: str, root: str, m, output_samples: int, max_clips: int
                    ) -> tuple[list[dict], list[benchmark.Request]]:
  """(reference clips {'waveform', 'caption', 'path'}, one generation request per clip)."""
  entries = manifest.read_manifest(manifest_path, root)[:max_clips]
  clips, requests = [], []
  for i, e in enumerate(entries):
    audio = audio_io.load_clip(e['path'], m.sample_rate)
    caption = manifest.window_caption(json.loads(e['caption']), 0.0)
    inputs = {'text': caption}
    if e['task'] in _VIDEO_TASKS and e['video_path']:
      inputs['video'] = e['video_path']
      inputs['sync'] = e['sync_feature'] or None
    if e['task'] in _PROMPT_TASKS:
      inputs['audio'] = manifest.official_prompt(audio, 0, e['type'], m.sample_rate,
                                                 m.prompt_samples)
    if e['task'] == 1:
      inputs['text'] = ''  # video_condition lines are generated from the video alone
    clips.append({'waveform': audio_io.pad_crop(audio, 0, output_samples), 'caption': caption,
                  'path': e['path']})
    requests.append(benchmark.Request(data_tasks.TASKS[e['task']], i, inputs))
  return clips, requests


def cnn14_embedder(path: str, variant: str, sample_rate: int, batch_size: int = 8) -> EmbedFn:
  """CNN14 from a local PANNs checkpoint as an `EmbedFn` for audio at `sample_rate`."""
  model, params = cnn14_weights.load_cnn14(path, variant)
  return module_embedder(model, params, sample_rate, batch_size)


def module_embedder(model: cnn14.Cnn14, params, sample_rate: int, batch_size: int = 8
                    ) -> EmbedFn:
  """Any `cnn14.Cnn14` and its params as an `EmbedFn`; batches are padded to `batch_size`."""
  apply = jax.jit(lambda x: model.apply({'params': params}, x))

  def embed(waves):
    x = cnn14.prepare_audio(np.asarray(waves), sample_rate, model.sample_rate)
    embs, logits = [], []
    for start in range(0, x.shape[0], batch_size):
      chunk = x[start:start + batch_size]
      pad = np.zeros((batch_size - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
      e, l = apply(np.concatenate([chunk, pad]))
      embs.append(np.asarray(e, np.float64)[:chunk.shape[0]])
      logits.append(np.asarray(l, np.float64)[:chunk.shape[0]])
    return np.concatenate(embs), np.concatenate(logits)
  return embed


def reference_metrics(ref_waves: Sequence[np.ndarray], gen_waves: Sequence[np.ndarray],
                      embed_fn: EmbedFn) -> dict:
  """FD, KL (sigmoid and softmax) and IS of generated vs reference clips (paired by index)."""
  if len(ref_waves) != len(gen_waves) or len(ref_waves) < 2:
    raise ValueError(f'need >= 2 paired clips, got {len(ref_waves)} reference and '
                     f'{len(gen_waves)} generated')
  n = min(min(w.shape[0] for w in ref_waves), min(w.shape[0] for w in gen_waves))
  ref_emb, ref_logits = embed_fn(np.stack([w[:n] for w in ref_waves]))
  gen_emb, gen_logits = embed_fn(np.stack([w[:n] for w in gen_waves]))
  is_mean, is_std = metrics.inception_score(gen_logits, splits=min(10, len(gen_waves)),
                                            shuffle_seed=2020)
  return {'fd': metrics.embedding_frechet_distance(ref_emb, gen_emb),
          'kl_sigmoid': metrics.kl_divergence(ref_logits, gen_logits, 'sigmoid'),
          'kl_softmax': metrics.kl_divergence(ref_logits, gen_logits, 'softmax'),
          'is_mean': is_mean, 'is_std': is_std, 'num_clips': len(gen_waves)}


def manifest_markdown(result: dict, title: str) -> str:
  r = result['metrics']
  rows = [('FD (PANNs)', f"{r['fd']:.3f}"), ('KL (sigmoid)', f"{r['kl_sigmoid']:.4f}"),
          ('KL (softmax)', f"{r['kl_softmax']:.4f}"),
          ('IS', f"{r['is_mean']:.3f} ± {r['is_std']:.3f}"), ('Clips', r['num_clips'])]
  return f'# {title}\n\n' + benchmark.markdown_table(('Metric', 'Value'), rows)

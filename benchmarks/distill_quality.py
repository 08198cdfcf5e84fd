"""How close are a distilled student's 4-step samples to its teacher's many-step samples?

  python -m benchmarks.distill_quality --config configs/tiny.py --teacher /tmp/teacher/export \
      --student /tmp/distill/export[,/tmp/other/export] [--clips 32] [--ref_steps 50]

For the first `--clips` held-out clips of the config's dataset (their text, video and audio
prompt; the same initial noise for every sampler, and the same re-noise for the student sampler):
  reference  teacher, Euler `--ref_steps` steps, CFG 6 (official inference)
  candidates teacher Euler 4 steps CFG 6; teacher weights with the 4-step student sampler (what the
             student is before distillation); the student, 4 steps (denoise-renoise, CFG 1)
  floor      the reference sampler again from independent noise: the unpaired metrics' value for
             samples from the reference distribution itself (finite-sample noise)
Metrics, each vs the reference, mean over clips (lower is closer):
  latent MSE    mean (x - x_ref)^2 over the (T, C) latents (paired: same prompt and noise)
  log-mel L1    mean |logmel(x) - logmel(x_ref)| in dB, 64 mel bands of the decoded audio (paired)
  mel-profile   RMS dB difference between the clip-averaged log-mel spectra (unpaired: compares
                the sets' average spectra, which DMD targets, not the individual trajectories)
  FD mel        Frechet distance between the sets of per-clip average log-mel spectra (64-d,
                dB; unpaired, distribution-level: means and covariances across clips)
  std           the latents' standard deviation (under-dispersed, blurry samples read low)
Conditioning is deterministic (posterior mean prompts, no MAF dropout).
"""
import os

from absl import app, flags
from ml_collections import config_flags


_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'Config (model + data).')
_TEACHER = flags.DEFINE_string('teacher', None, 'Teacher inference checkpoint.')
_STUDENT = flags.DEFINE_list('student', None, 'Student inference checkpoint(s) (distill export); '
                             'several, comma-separated, share one reference.')
_CLIPS = flags.DEFINE_integer('clips', 32, 'Held-out clips.')
_REF_STEPS = flags.DEFINE_integer('ref_steps', 50, 'Teacher reference Euler steps.')
_SEED = flags.DEFINE_integer('seed', 0, 'Noise seed.')


def main(argv):
  del argv
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  import jax.numpy as jnp
  import librosa
  import numpy as np

  from axturbo import flow
  from axturbo.data import pipeline
  from axturbo.eval import metrics
  from axturbo.generation import sampling
  from axturbo.models import audiox
  from axturbo.runtime import checkpoints

  config = _CONFIG.value
  m = checkpoints.load_model_config(_TEACHER.value)
  model = audiox.build_model(m)
  teacher = checkpoints.load_params(_TEACHER.value)
  students = {f'student{i}': checkpoints.load_params(d) for i, d in enumerate(_STUDENT.value)}

  @jax.jit
  def condition(p, batch):
    f = model.apply({'params': p}, batch, rng=jax.random.key(0), deterministic=True,
                    method='encode_conditions')
    return model.apply({'params': p}, f['text'], f['video'], f['audio'], method='fuse')

  def euler(p, cond, noise, steps, cfg):
    vf = lambda z, t, c: model.apply({'params': p}, z, t, c, method='velocity')
    return sampling.sample_euler(vf, noise, cond, steps, cfg)

  def student4(p, cond, noise, renoise):
    vf = lambda z, t: model.apply({'params': p}, z, t, cond, method='velocity')
    return sampling.sample_student(vf, noise, renoise, 4)

  euler = jax.jit(euler, static_argnums=(3, 4))
  student4 = jax.jit(student4)
  decode = jax.jit(lambda p, z: model.apply({'params': p}, z, method='decode_latents'))

  def logmel(wave):  # (N, 2) -> (64, frames) dB of the mid channel
    mel = librosa.feature.melspectrogram(y=wave.mean(-1), sr=m.sample_rate, n_fft=1024,
                                         hop_length=256, n_mels=64)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)

  it = pipeline.make_iterator(config, split='heldout', process_index=0, process_count=1)
  out = {k: [] for k in ('ref', 'floor', 'teacher4', 'init4', *students)}
  key, done = jax.random.key(_SEED.value), 0
  while done < _CLIPS.value:
    batch = next(it)
    valid = np.asarray(batch.pop('valid'))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    b = valid.shape[0]
    key, k1, k2, k3 = jax.random.split(key, 4)
    noise = jax.random.normal(k1, (b, m.trunk.seq_len, m.trunk.io_channels))
    renoise = jax.random.normal(k2, (3,) + noise.shape)
    c_t = condition(teacher, batch)
    zs = {'ref': euler(teacher, c_t, noise, _REF_STEPS.value, flow.OFFICIAL_CFG_SCALE),
          'floor': euler(teacher, c_t, jax.random.normal(k3, noise.shape), _REF_STEPS.value,
                         flow.OFFICIAL_CFG_SCALE),
          'teacher4': euler(teacher, c_t, noise, 4, flow.OFFICIAL_CFG_SCALE),
          'init4': student4(teacher, c_t, noise, renoise)}
    for k, p in students.items():
      zs[k] = student4(p, condition(p, batch), noise, renoise)
    for k, z in zs.items():
      out[k].append(np.asarray(z)[valid])
    done += int(valid.sum())
    print(f'{done} clips', flush=True)
  z = {k: np.concatenate(v)[:_CLIPS.value] for k, v in out.items()}
  mels = {k: np.stack([logmel(w) for w in np.asarray(decode(teacher, jnp.asarray(v)))])
          for k, v in z.items()}
  print(f'{_CLIPS.value} held-out clips; reference: teacher {_REF_STEPS.value}-step Euler CFG 6')
  print(f'{"samples":34s} {"latent MSE":>11s} {"log-mel L1 dB":>14s} {"mel-profile dB":>15s} '
        f'{"FD mel":>8s} {"std":>6s}')
  names = {'floor': f'teacher, {_REF_STEPS.value}-step, other noise',
           'teacher4': 'teacher, 4-step Euler CFG 6', 'init4': 'teacher weights, student sampler',
           **{k: f'{k}, 4 steps ({os.path.basename(os.path.dirname(os.path.abspath(d)))})'
              for k, d in zip(students, _STUDENT.value)}}
  prof = lambda x: x.mean(axis=(0, 2))
  clip_profile = lambda x: x.mean(axis=2)   # (clips, 64): each clip's average log-mel spectrum
  for k, name in names.items():
    mse = float(np.mean((z[k] - z['ref']) ** 2))
    l1 = float(np.mean(np.abs(mels[k] - mels['ref'])))
    pd = float(np.sqrt(np.mean((prof(mels[k]) - prof(mels['ref'])) ** 2)))
    fd = metrics.embedding_frechet_distance(clip_profile(mels['ref']), clip_profile(mels[k]))
    print(f'{name:34s} {mse:11.4f} {l1:14.2f} {pd:15.2f} {fd:8.1f} {float(np.std(z[k])):6.3f}')
  print(f'{"(reference)":34s} {"":>11s} {"":>14s} {"":>15s} {"":>8s} {float(np.std(z["ref"])):6.3f}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['teacher', 'student'])
  app.run(main)

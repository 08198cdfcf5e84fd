"""The converter end to end: official-format file -> `python -m axturbo.convert` -> orbax
checkpoint -> load -> the same outputs as the official PyTorch modules.

The official-format checkpoint is assembled from the per-module parity fixtures (random
weights of the official modules at small sizes, see each module's test for how they were
made), under the key prefixes a released student checkpoint uses ('student.model.model.*',
'student.maf_block.*', ...). Each network therefore has its own small size; the converter maps
each one with the sizes of its own config section.
"""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from axturbo.runtime import checkpoints
from axturbo.convert import hf, official, torch_io
from axturbo.convert.common import ConversionError
from axturbo.models import audiox
from axturbo.models.disc_head import DiscriminatorHeads
from configs import official as official_config
from tests.fixture_io import load_fixture, rel_err, write_hf_folder

torch = pytest.importorskip('torch')
REPO = pathlib.Path(__file__).resolve().parents[1]
VIDEO, AUDIO = official.VIDEO, official.AUDIO


def _prefixed(sd: dict, prefix: str) -> dict:
  return {prefix + k: v for k, v in sd.items()}


def _official_state_dict() -> dict:
  """Canonical official names -> arrays, one small network per fixture."""
  clip_sd = load_fixture('hf_clip_tiny')[0]
  out = {}
  out.update(load_fixture('mmdit')[0])
  out.update(_prefixed(load_fixture('maf')[0], 'maf_block.'))
  out.update(_prefixed(load_fixture('video_cond')[0], VIDEO))
  out.update(_prefixed(clip_sd, VIDEO + 'visual_encoder_model.'))
  out.update(_prefixed(load_fixture('audio_prompt_small')[0], AUDIO))
  out.update(_prefixed(load_fixture('vae_small')[0], 'pretransform.model.'))
  out.update(load_fixture('disc_head')[0])
  return out


def _model_config() -> mlc.ConfigDict:
  m = official_config.model_config()
  clip_meta, t5_meta = load_fixture('hf_clip_tiny')[3], load_fixture('hf_t5_tiny')[3]
  m.trunk.update(io_channels=8, embed_dim=48, depth=3, num_heads=4, head_dim=12, cond_dim=32,
                 cond_len=12, seq_len=15, mlp_hidden=32)
  m.maf.update(load_fixture('maf')[3]['config'] | {'num_layers': 2})
  del m.maf['num_fusion_layers']
  m.video.update(load_fixture('video_cond')[3]['config'])
  ap = load_fixture('audio_prompt_small')[3]
  m.vae.update(channels=ap['channels'], c_mults=ap['c_mults'], strides=ap['strides'],
               latent_dim=ap['latent_dim'])
  m.audio_prompt.update(latent_seq_len=ap['latent_seq_len'], output_dim=ap['output_dim'])
  m.clip.update(hf.clip_vision_fields(clip_meta['hf_config'].get('vision_config',
                                                                 clip_meta['hf_config'])))
  m.t5.update(hf.t5_fields(t5_meta['hf_config']))
  m.disc.update(num_heads=3, in_channels=8, hidden=16)
  return m


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """Runs the CLI once on a .ckpt written with torch.save, as a released file would be."""
  tmp = tmp_path_factory.mktemp('convert')
  sd = _official_state_dict()
  # np.array, not np.ascontiguousarray: the latter turns 0-d gates into shape (1,).
  stored = {(k if k.startswith('discriminator_heads.') else 'student.' + k):
            torch.from_numpy(np.array(v)) for k, v in sd.items()}
  torch.save({'state_dict': stored, 'global_step': 7}, tmp / 'audiox_turbo.ckpt')
  t5_sd, _, _, t5_meta = load_fixture('hf_t5_tiny')
  t5_dir = write_hf_folder(tmp / 't5', t5_sd, t5_meta['hf_config'])
  m = _model_config()
  (tmp / 'cfg.py').write_text(
      'import json\nimport ml_collections as mlc\n\ndef get_config():\n'
      f'  return mlc.ConfigDict({{"model": json.loads({m.to_json()!r})}})\n')
  out = tmp / 'ckpt'
  run = subprocess.run(
      [sys.executable, '-m', 'axturbo.convert', f'--config={tmp / "cfg.py"}',
       f'--checkpoint={tmp / "audiox_turbo.ckpt"}', f'--t5={t5_dir}', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return out, run.stdout, sd, t5_dir, tmp


@pytest.mark.e2e
def test_cli_reports_every_network(converted):
  _, stdout, _, _, _ = converted
  for name in ('trunk', 'maf', 'video', 'audio_prompt', 'clip', 'vae', 'disc', 'text'):
    assert f'  {name} ' in stdout


@pytest.mark.e2e
def test_round_trip_matches_official_outputs(converted):
  out, _, _, _, _ = converted
  params = checkpoints.load_params(out)
  m = checkpoints.load_model_config(out)
  model = audiox.build_model(m, check=False)

  def run(method, *args, **kw):
    return model.apply({'params': params}, *args, method=method, **kw)

  _, i, o, _ = load_fixture('mmdit')
  v = run('velocity', i['x'].transpose(0, 2, 1), i['t'].astype(np.float32), i['cond'])
  assert rel_err(v, o['v'].transpose(0, 2, 1)) <= 1e-5
  _, i, o, _ = load_fixture('maf')
  assert rel_err(run('fuse', i['text'], i['video'], i['audio']), o['out']) <= 1e-5
  _, i, o, _ = load_fixture('video_cond')
  is_empty = jnp.asarray([bool(np.all(x == 0)) for x in i['videos']])
  got = model.apply({'params': params}, i['clip_tokens'], i['sync'], is_empty,
                    method=lambda mdl, *a: mdl.video(*a))
  assert rel_err(got, o['out']) <= 1e-5
  _, i, o, _ = load_fixture('hf_clip_tiny')
  got = run('encode_frames', np.moveaxis(i['frames'], 1, -1)[:, None])
  assert rel_err(got[:, 0], o['last_hidden_state']) <= 1e-5
  _, i, o, _ = load_fixture('vae_small')
  z = run('encode_latents', i['audio'].transpose(0, 2, 1), i['eps'].transpose(0, 2, 1))
  assert rel_err(z, o['z'].transpose(0, 2, 1)) <= 1e-5
  got = run('decode_latents', i['latents'].transpose(0, 2, 1))
  assert rel_err(got, o['decoded_latents'].transpose(0, 2, 1)) <= 1e-5
  _, i, o, _ = load_fixture('audio_prompt_small')
  prompt = np.stack([i['stereo/prompt0'].T, np.pad(i['stereo/prompt1'].T, ((0, 25), (0, 0)))])
  got = run('encode_audio_prompt', prompt, spans=(i['stereo/starts'], i['stereo/lengths']),
            noise=i['stereo/eps'].transpose(0, 2, 1))
  assert rel_err(got, o['stereo']) <= 1e-5
  _, i, o, _ = load_fixture('hf_t5_tiny')
  got = run('encode_text', i['input_ids'], i['attention_mask'])
  want = o['last_hidden_state'] * i['attention_mask'][..., None]
  assert rel_err(got, want) <= 1e-5
  _, i, o, _ = load_fixture('disc_head')
  heads = DiscriminatorHeads(**m.disc)
  got = heads.apply({'params': params['disc']}, np.swapaxes(i['feats'], 2, 3))
  assert rel_err(got, np.swapaxes(o['scores'], 1, 2)) <= 1e-5


@pytest.mark.e2e
def test_cli_refuses_existing_output(converted):
  out, _, _, t5_dir, tmp = converted
  run = subprocess.run(
      [sys.executable, '-m', 'axturbo.convert', f'--config={tmp / "cfg.py"}',
       f'--checkpoint={tmp / "audiox_turbo.ckpt"}', f'--t5={t5_dir}', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode != 0 and 'already holds a checkpoint' in run.stderr
  assert checkpoints.load_params(out)  # untouched


def _convert(sd, t5_dir):
  return official.convert(sd, _model_config(), source='x.ckpt', t5_dir=str(t5_dir),
                          log=lambda _: None)


@pytest.mark.e2e
def test_missing_misshaped_and_extra_keys_are_named(converted):
  _, _, sd, t5_dir, _ = converted
  bad = dict(sd)
  key = 'maf_block.fusion_transformer.layers.1.linear1.weight'
  bad[key] = bad[key][:, :-1]
  with pytest.raises(ConversionError, match=key.replace('.', r'\.') + '.*shape'):
    _convert(bad, t5_dir)
  missing = {k: v for k, v in sd.items() if k != VIDEO + 'sync_weight'}
  with pytest.raises(ConversionError, match=r'missing tensor .*video_prompt\.sync_weight'):
    _convert(missing, t5_dir)
  extra = dict(sd, **{AUDIO + 'proj_extra.weight': np.ones(3, np.float32)})
  with pytest.raises(ConversionError, match=r'audio_prompt\.proj_extra\.weight'):
    _convert(extra, t5_dir)
  with pytest.raises(ConversionError, match='T5'):
    official.convert(sd, _model_config(), source='x.ckpt', log=lambda _: None)


@pytest.mark.e2e
def test_separate_vae_file_replaces_the_checkpoint_copy(converted):
  _, _, sd, t5_dir, _ = converted
  vae_sd = load_fixture('vae_small')[0]
  without = {k: v for k, v in sd.items() if not k.startswith('pretransform.')}
  with pytest.raises(ConversionError, match='VAE'):
    _convert(without, t5_dir)
  doubled = {k: v * 2 if k.endswith('.bias') else v for k, v in vae_sd.items()}
  params = official.convert(without, _model_config(), source='x.ckpt', vae_arrays=doubled,
                            t5_dir=str(t5_dir), log=lambda _: None)
  np.testing.assert_allclose(params['vae']['encoder']['conv_in']['bias'],
                             2 * vae_sd['encoder.layers.0.bias'])


def test_unused_list_is_exact_for_the_official_key_list():
  """Every official tensor is mapped or documented unused: check the documented patterns
  against the full key list (names only; nothing is materialised)."""
  import fnmatch
  keys = [line.split('\t')[0] for line in
          (REPO / 'tests/fixtures/official_state_dict_keys.tsv').read_text().splitlines()]
  assert len(keys) == 1384
  for pattern, why in official.UNUSED:
    assert any(fnmatch.fnmatchcase(k, pattern) for k in keys), (pattern, why)

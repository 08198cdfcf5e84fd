"""The converter end to end: official-format file -> `python -m axturbo.convert` -> orbax
checkpoint -> load -> the same outputs as the official PyTorch modules.

The official-format checkpoint is assembled from the per-module parity fixtures (random
weights of the official modules at small sizes, see each module's test for how they were
made), under the key prefixes a released student checkpoint uses ('student.model.model.*',
'student.maf_block.*', ...). Each network therefore has its own small size; the converter maps
each one with the sizes of its own config section.

The `--official_config` tests write official model_config.json files (`_official_json`: the
released file's structure, with its values or the fixtures' sizes) and check what they derive:
the released file gives configs/official.py's sizes; the trunk fixture's file (width 48,
"num_heads": 12, i.e. 4 heads of 12) reproduces the official outputs; a width-120 file gives
10 heads of 12 and an FFN of 512 through the CLI.
"""
import json
import math
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
from axturbo.convert.official_config import apply as apply_fields, model_fields
from axturbo.convert.common import ConversionError, StateDict
from axturbo.convert.mmdit import mmdit_params, official_trunk_sizes
from axturbo.models import audiox
from axturbo.models.mmdit import MMDiT
from axturbo.models.disc_head import DiscriminatorHeads
from configs import official as official_config
from tests import optional
from tests.fixture_io import load_fixture, rel_err, write_hf_folder
from tests.script_runs import env as script_env

torch = optional.torch()
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


def _write_config(path: pathlib.Path, m: mlc.ConfigDict) -> pathlib.Path:
  """A --config file whose `model` section is `m`."""
  path.write_text('import json\nimport ml_collections as mlc\n\ndef get_config():\n'
                  f'  return mlc.ConfigDict({{"model": json.loads({m.to_json()!r})}})\n')
  return path


def _cli(*args, tmp: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'axturbo.convert', *map(str, args)], cwd=REPO,
                        env=script_env(tmp, devices=1), capture_output=True, text=True,
                        timeout=600)


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
  _write_config(tmp / 'cfg.py', _model_config())
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


# --- --official_config: the official model_config.json -> our model fields -------------------

RELEASED_TRUNK = dict(io_channels=64, embed_dim=1536, depth=24, num_heads=24)
RELEASED_VAE = dict(channels=128, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8],
                    latent_dim=64)
# The fixtures' sizes (see _model_config), as official files would state them.
FIXTURE_VAE = dict(channels=8, c_mults=[1, 2, 4], strides=[2, 4, 2], latent_dim=16)
FIXTURE_MAF = dict(num_experts_per_modality=8, num_heads=4, num_fusion_layers=2)


def _autoencoder(vae: dict) -> dict:
  """An official `pretransform` entry: Oobleck encoder/decoder with a VAE bottleneck."""
  sizes = {k: vae[k] for k in ('channels', 'c_mults', 'strides')}
  return {'type': 'autoencoder', 'iterate_batch': True, 'config': {
      'encoder': {'type': 'oobleck', 'requires_grad': False, 'config': {
          'in_channels': 2, **sizes, 'latent_dim': 2 * vae['latent_dim'], 'use_snake': True}},
      'decoder': {'type': 'oobleck', 'config': {
          'out_channels': 2, **sizes, 'latent_dim': vae['latent_dim'], 'use_snake': True,
          'final_tanh': False}},
      'bottleneck': {'type': 'vae'}, 'latent_dim': vae['latent_dim'],
      'downsampling_ratio': math.prod(vae['strides']), 'io_channels': 2}}


def _official_json(trunk: dict = RELEASED_TRUNK, vae: dict = RELEASED_VAE,
                   maf: dict | None = None, cond_dim: int = 768,
                   prompt_latent_len: int = 215) -> dict:
  """An official model_config.json: the released file's structure and switches, with the
  given sizes (the released ones by default). `trunk` is `model.diffusion.config`'s sizes."""
  maf = maf or dict(num_experts_per_modality=64, num_heads=24, num_fusion_layers=8)
  clip_cfg = {'clip_model_name': 'clip-vit-base-patch32', 'mask_ratio': 0, 'mask_type': 'input',
              'sync_type': 'add'}
  t5_cfg = {'t5_model_name': 't5-base', 'max_length': 128, 'mask_ratio': 0,
            'mask_type': 'input'}
  prompt_cfg = {'sample_rate': 44100, 'pretransform_config': _autoencoder(vae),
                'pretransform_ckpt_path': 'checkpoints/pretransform/vae.ckpt',
                'latent_seq_len': prompt_latent_len, 'mask_ratio_start': 0.25,
                'mask_ratio_end': 0.75}
  return {
      'model_type': 'diffusion_cond', 'sample_size': 485100, 'sample_rate': 44100,
      'conditioning_seconds': 10, 'video_fps': 5, 'audio_channels': 2,
      'model': {
          'pretransform': _autoencoder(vae),
          'conditioning': {'cond_dim': cond_dim, 'configs': [
              {'id': 'video_prompt', 'type': 'clip-with-sync-w-empty-feat', 'config': clip_cfg},
              {'id': 'text_prompt', 'type': 't5', 'config': t5_cfg},
              {'id': 'audio_prompt', 'type': 'audio_autoencoder', 'config': prompt_cfg}]},
          'diffusion': {
              'cross_attention_cond_ids': ['video_prompt', 'text_prompt', 'audio_prompt'],
              'global_cond_ids': [], 'type': 'mmdit', 'gate': True, 'gate_type': 'MAF',
              'gate_type_config': maf, 'diffusion_objective': 'rectified_flow',
              'config': {'cond_token_dim': cond_dim, 'global_cond_dim': cond_dim,
                         'project_cond_tokens': False,
                         'transformer_type': 'continuous_transformer',
                         'condition_mask_type': 'cat', 'video_fps': 5, **trunk}},
          'io_channels': trunk['io_channels']},
      'training': {'dmd_sample_steps': 4}}


def _fixture_json(**trunk) -> dict:
  """The file the fixtures' networks would come with: the trunk fixture's sizes
  (MMDiTWrapper(io_channels=8, ..., num_heads=12), 16 trunk positions), updated by `trunk`."""
  sizes = dict(io_channels=8, embed_dim=48, depth=3, num_heads=12, _latent_seq_len=16)
  return _official_json(sizes | trunk, FIXTURE_VAE, FIXTURE_MAF, cond_dim=32,
                        prompt_latent_len=20)


def _fields(tmp_path, data: dict) -> dict:
  path = tmp_path / 'model_config.json'
  path.write_text(json.dumps(data))
  return model_fields(path)


def test_official_trunk_sizes():
  """Heads: the configured count is the head width (D // C heads); FFN: rounded up to 256."""
  assert official_trunk_sizes(1536, 24) == dict(num_heads=64, head_dim=24, mlp_hidden=4096)
  assert official_trunk_sizes(120, 12) == dict(num_heads=10, head_dim=12, mlp_hidden=512)
  # The trunk fixture: width 48, "12 heads", ConvMLP(48, 48, multiple_of=16).
  assert official_trunk_sizes(48, 12, 1.0, 16) == dict(num_heads=4, head_dim=12, mlp_hidden=32)
  # Floor division: 96 // 36 = 2 heads of 48, though 36 does not divide 96.
  assert official_trunk_sizes(96, 36)['num_heads'] == 2
  with pytest.raises(ConversionError, match='8 heads'):  # 100 // 12 = 8 does not divide 100
    official_trunk_sizes(100, 12)


def test_released_json_derives_the_official_config(tmp_path):
  """Every field the released file determines already has that value in configs/official.py."""
  fields = _fields(tmp_path, _official_json())
  m = official_config.model_config()
  before = m.to_dict()
  apply_fields(m, fields)
  assert m.to_dict() == before
  assert {'trunk.num_heads', 'trunk.head_dim', 'trunk.mlp_hidden', 'maf.num_layers',
          'vae.strides', 'text.max_length', 'audio_prompt.latent_seq_len'} <= set(fields)


@pytest.mark.parametrize('edit, message', [
    (lambda d: d['model']['diffusion']['config'].update(heads=8),
     'unknown key model.diffusion.config.heads'),
    (lambda d: d['model']['diffusion']['config'].pop('embed_dim'),
     'missing key model.diffusion.config.embed_dim'),
    (lambda d: d['model'].update(extra={}), 'unknown key model.extra'),
    (lambda d: d['model']['diffusion']['config'].update(transformer_type='x-transformers'),
     'model.diffusion.config.transformer_type = "x-transformers" is not supported'),
    (lambda d: d['model']['conditioning']['configs'][1]['config'].update(project_out=True),
     r'model.conditioning.configs\[1\].config.project_out = true is not supported'),
    (lambda d: d['model']['pretransform']['config']['decoder']['config'].pop('final_tanh'),
     'final_tanh = true is not supported.*absent'),
], ids=['unknown', 'missing', 'unknown_section', 'unsupported', 'unsupported_list_entry',
        'absent_means_official_default'])
def test_official_json_errors_name_file_and_key(tmp_path, edit, message):
  data = _official_json()
  edit(data)
  with pytest.raises(ConversionError, match='model_config.json: .*' + message) as e:
    _fields(tmp_path, data)
  assert '\n' not in str(e.value)


def test_official_json_head_split_matches_official_outputs(tmp_path):
  """The trunk fixture's own file ("num_heads": 12 at width 48) derives 4 heads of 12, which
  reproduce the official outputs; the same-shaped 12 heads of 4 convert but are wrong."""
  m = _model_config()
  fields = _fields(tmp_path, _fixture_json(mlp_ratio=1.0))
  apply_fields(m, fields)
  assert (m.trunk.num_heads, m.trunk.head_dim, m.trunk.seq_len) == (4, 12, 15)
  assert m.trunk.mlp_hidden == 256  # the official 256 rounding of int(2 * 48 / 3) = 32
  # ...but the fixture's blocks were built with ConvMLP(multiple_of=16) to stay small.
  m.trunk.mlp_hidden = official_trunk_sizes(48, 12, 1.0, multiple_of=16)['mlp_hidden']
  sd, i, o, _ = load_fixture('mmdit')
  x, t, cond = i['x'].transpose(0, 2, 1), i['t'].astype(np.float32), i['cond']

  def velocity(trunk_cfg):
    model = MMDiT(**trunk_cfg)
    params = mmdit_params(StateDict(sd, 'mmdit.npz').scope('model.model.'), model)
    return model.apply({'params': params}, x, t, cond)

  want = o['v'].transpose(0, 2, 1)
  assert rel_err(velocity(m.trunk), want) <= 1e-5
  transposed = dict(m.trunk, num_heads=12, head_dim=4)
  assert rel_err(velocity(transposed), want) > 1e-2


def _trunk_state_dict(rng, d: int, depth: int, hidden: int, io: int = 8, cond_dim: int = 32,
                      cond_len: int = 12, trunk_len: int = 16, k: int = 3) -> dict:
  """Random official `model.model.*` tensors (shapes as in official_state_dict_keys.tsv)."""
  shapes = {'timestep_features.weight': (128, 1), 'to_timestep_embed.0.weight': (d, 256),
            'to_timestep_embed.0.bias': (d,), 'to_timestep_embed.2.weight': (d, d),
            'to_timestep_embed.2.bias': (d,), 'preprocess_conv.weight': (io, io, 1),
            'postprocess_conv.weight': (io, io, 1), 'transformer.project_in.weight': (d, io),
            'transformer.project_out.weight': (io, d),
            'transformer.proj_mm_tokens.weight': (d, cond_dim),
            'transformer.proj_mm_tokens.bias': (d,),
            'transformer.proj_mm_seq_len.weight': (trunk_len, cond_len),
            'transformer.proj_mm_seq_len.bias': (trunk_len,)}
  for i in range(depth):
    shapes.update({f'transformer.layers.{i}.{key}': shape for key, shape in {
        'adaLN_modulation.1.weight': (6 * d, d), 'adaLN_modulation.1.bias': (6 * d,),
        'attn.qkv.weight': (3 * d, d), 'attn.qkv.bias': (3 * d,),
        'linear1.weight': (d, d, k), 'linear1.bias': (d,),
        'cross_attn.to_q.weight': (d, d), 'cross_attn.to_kv.weight': (2 * d, d),
        'ffn.w1.weight': (hidden, d, k), 'ffn.w3.weight': (hidden, d, k),
        'ffn.w2.weight': (d, hidden, k)}.items()})
  return {'model.model.' + key: rng.standard_normal(shape).astype(np.float32)
          for key, shape in shapes.items()}


@pytest.fixture(scope='module')
def width_120(tmp_path_factory):
  """A .safetensors checkpoint at width 120 ("num_heads": 12) that also holds its T5 tower
  (as an official run with T5 enable_grad saves it), and a byte-tokenizer --config."""
  from safetensors.numpy import save_file
  tmp = tmp_path_factory.mktemp('width120')
  sd = {k: v for k, v in _official_state_dict().items() if not k.startswith('model.model.')}
  sd.update(_trunk_state_dict(np.random.default_rng(0), d=120, depth=2, hidden=512))
  sd.update(_prefixed(load_fixture('hf_t5_tiny')[0], official.TEXT))
  save_file({k: np.array(v) for k, v in sd.items()}, str(tmp / 'turbo.safetensors'))
  (tmp / 'model_config.json').write_text(json.dumps(_fixture_json(embed_dim=120, depth=2)))
  m = _model_config()
  m.text.tokenizer = 'byte'
  return tmp, sd, _write_config(tmp / 'cfg.py', m)


@pytest.mark.e2e
def test_cli_official_config_derives_heads_and_needs_no_t5(width_120):
  """--official_config sets 10 heads of 12 and an FFN of 512 at width 120 and says so in one
  line; a byte-tokenizer config converts without --t5 (T5 comes from the checkpoint)."""
  tmp, sd, cfg = width_120
  out = tmp / 'ckpt'
  run = _cli(f'--config={cfg}', f'--official_config={tmp / "model_config.json"}',
             f'--checkpoint={tmp / "turbo.safetensors"}', f'--out={out}', tmp=tmp)
  assert run.returncode == 0, run.stderr[-3000:]
  said = [line for line in run.stdout.splitlines() if 'model_config.json set ' in line]
  assert len(said) == 1
  for field in ('model.trunk.num_heads=10', 'model.trunk.head_dim=12',
                'model.trunk.mlp_hidden=512', 'model.trunk.embed_dim=120'):
    assert field in said[0]
  assert f'(from {tmp / "turbo.safetensors"}: {official.TEXT}*)' in run.stdout
  m = checkpoints.load_model_config(out)
  assert (m.trunk.num_heads, m.trunk.head_dim, m.trunk.mlp_hidden) == (10, 12, 512)
  assert m.text.tokenizer == 'byte' and not (out / 'tokenizer').exists()
  params = checkpoints.load_params(out)
  # Official fused qkv rows are h*3*H + d*3 + j (j = 0 for q): head h, feature d of layer 0.
  q = params['trunk']['layers']['block']['q']['kernel'][0]
  qkv = sd['model.model.transformer.layers.0.attn.qkv.weight']
  assert q.shape == (120, 10, 12)
  np.testing.assert_array_equal(q[:, 7, 5], qkv[7 * 36 + 5 * 3])
  t5_sd = load_fixture('hf_t5_tiny')[0]
  np.testing.assert_array_equal(params['text']['shared']['embedding'],
                                t5_sd['shared.weight'])


def test_malformed_safetensors_is_one_line_naming_the_file(tmp_path):
  """Random bytes (whose first 8 read as a huge header length), a header length that fits
  but no JSON, and a header whose offsets overrun the data: ConversionError, never a raw
  OverflowError/KeyError."""
  rng = np.random.default_rng(0)
  header = json.dumps({'w': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]}}).encode()
  cases = [rng.bytes(4096), (16).to_bytes(8, 'little') + rng.bytes(64),
           len(header).to_bytes(8, 'little') + header + bytes(8), b'\x01']
  for i, blob in enumerate(cases):
    path = tmp_path / f'case{i}.safetensors'
    path.write_bytes(blob)
    with pytest.raises(ConversionError) as e:
      torch_io.load_state_dict(path)
    assert str(e.value).startswith(str(path)) and '\n' not in str(e.value)


def _one_line_error(run: subprocess.CompletedProcess, *needles: str) -> None:
  assert run.returncode != 0
  assert 'Traceback' not in run.stderr, run.stderr[-3000:]
  lines = [line for line in run.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, run.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]


@pytest.mark.e2e
def test_cli_refuses_a_head_split_that_does_not_tile_the_width(width_120):
  tmp, _, _ = width_120
  m = _model_config()
  m.text.tokenizer = 'byte'
  m.trunk.update(embed_dim=120, depth=2, num_heads=12, head_dim=12, mlp_hidden=512)
  cfg = _write_config(tmp / 'bad_heads.py', m)
  run = _cli(f'--config={cfg}', f'--checkpoint={tmp / "turbo.safetensors"}',
             f'--out={tmp / "bad_heads"}', tmp=tmp)
  _one_line_error(run, 'model.trunk.num_heads * model.trunk.head_dim = 12 * 12 = 144',
                  'model.trunk.embed_dim = 120')


@pytest.mark.e2e
def test_cli_one_line_errors_for_bad_inputs(width_120):
  """Random bytes as .safetensors, an unknown key in the official JSON, and a checkpoint
  without T5 for a config that needs a T5 tower: one line each, naming what is wrong."""
  tmp, sd, cfg = width_120
  noise = tmp / 'noise.safetensors'
  noise.write_bytes(np.random.default_rng(1).bytes(4096))
  run = _cli(f'--config={cfg}', f'--checkpoint={noise}', f'--out={tmp / "o1"}', tmp=tmp)
  _one_line_error(run, str(noise), 'not a valid safetensors file')

  data = _fixture_json(embed_dim=120, depth=2)
  data['model']['diffusion']['config']['num_head'] = 12
  (tmp / 'typo.json').write_text(json.dumps(data))
  run = _cli(f'--config={cfg}', f'--official_config={tmp / "typo.json"}',
             f'--checkpoint={tmp / "turbo.safetensors"}', f'--out={tmp / "o2"}', tmp=tmp)
  _one_line_error(run, str(tmp / 'typo.json'), 'unknown key model.diffusion.config.num_head')

  from safetensors.numpy import save_file
  no_t5 = tmp / 'no_t5.safetensors'
  save_file({k: np.array(v) for k, v in sd.items() if not k.startswith(official.TEXT)},
            str(no_t5))
  run = _cli(f'--config={cfg}', f'--official_config={tmp / "model_config.json"}',
             f'--checkpoint={no_t5}', f'--out={tmp / "o3"}', tmp=tmp)
  _one_line_error(run, 'holds no T5 text tower', official.TEXT, '--t5')


@pytest.mark.e2e
def test_cli_needs_t5_for_the_hf_tokenizer(converted):
  _, _, _, _, tmp = converted
  run = _cli(f'--config={tmp / "cfg.py"}', f'--checkpoint={tmp / "audiox_turbo.ckpt"}',
             f'--out={tmp / "no_t5"}', tmp=tmp)
  assert run.returncode != 0 and 'Traceback' not in run.stderr
  assert "--t5 is required: model.text.tokenizer is 'hf'" in run.stderr


# --- the converter refuses what will not work, and says where sizes came from ----------------

def test_derived_fields_are_the_ones_the_released_json_sets(tmp_path):
  from axturbo.convert import official_config as oc
  fields = _fields(tmp_path, _official_json())
  assert all(oc.derives(f) for f in fields)
  assert not any(oc.derives(f) for f in ('trunk.scan_layers', 'trunk.rope_theta', 'video.dim',
                                          'text.tokenizer', 'clip.num_layers'))


@pytest.mark.e2e
def test_cli_refuses_a_synchformer_that_does_not_fit_the_video(width_120):
  """The released Synchformer makes (240, 768) features for 10 s; the fixture's model.video
  reads others: refused before the checkpoint is read, not at the first Generator.load."""
  tmp, _, cfg = width_120
  run = _cli(f'--config={cfg}', f'--official_config={tmp / "model_config.json"}',
             f'--checkpoint={tmp / "turbo.safetensors"}', f'--synchformer={tmp / "sf.pth"}',
             f'--out={tmp / "with_sf"}', tmp=tmp)
  _one_line_error(run, f'--synchformer {tmp / "sf.pth"}: model.synchformer makes (',
                  'model.video.sync_len, sync_dim')
  assert 'reading' not in run.stdout and not (tmp / 'with_sf').exists()


@pytest.mark.e2e
def test_cli_warns_about_sizes_given_by_hand(width_120):
  tmp, _, cfg = width_120
  missing = tmp / 'missing.safetensors'  # stops right after the sizes are settled
  run = _cli(f'--config={cfg}', f'--checkpoint={missing}', f'--out={tmp / "x"}',
             '--config.model.trunk.num_heads=10', '--config.model.trunk.head_dim=12',
             '--config.model.trunk.embed_dim=120', '--config.model.trunk.scan_layers=false',
             tmp=tmp)
  warned = [l for l in run.stderr.splitlines() if 'given by hand' in l]
  assert len(warned) == 1, run.stderr[-3000:]
  assert ('model.trunk.embed_dim, model.trunk.head_dim, model.trunk.num_heads given by hand; '
          '--official_config') in warned[0] and 'scan_layers' not in warned[0]
  run = _cli(f'--config={cfg}', f'--official_config={tmp / "model_config.json"}',
             f'--checkpoint={missing}', f'--out={tmp / "x"}',
             '--config.model.trunk.num_heads=12', '--config.model.trunk.head_dim=10', tmp=tmp)
  replaced = [l for l in run.stderr.splitlines() if 'replacing --config.model.' in l]
  assert len(replaced) == 2, run.stderr[-3000:]
  assert any('sets model.trunk.num_heads=10, replacing --config.model.trunk.num_heads=12' in l
             for l in replaced)
  assert not [l for l in run.stderr.splitlines() if 'given by hand' in l]

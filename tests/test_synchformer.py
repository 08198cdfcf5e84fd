"""Synchformer video features (axturbo.models.synchformer) and their converter.

Fixture tests/fixtures/synchformer_small.npz: `python -m tests.fixtures.make_official --only
synchformer_small` with the official code at af50898 (torch 2.13.0+cpu, torchvision 0.28.0,
timm 1.0.29, omegaconf 2.3.1; tests/fixtures/README.md says how to set that up).
  * The official `Synchformer()` was built with its MotionFormer config
    (divided_224_16x4.yaml) shrunk to VIT.EMBED_DIM 32, DEPTH 2, NUM_HEADS 4 (patch 16,
    tubelet 2, 16-frame windows, 224 x 224, MLP ratio 4 as released), by wrapping the
    `OmegaConf.load` it calls. Every tensor was redrawn (torch seed 0): cls/pos/temp embeddings
    N(0, 0.25), LayerNorm weights 1 + N(0, 0.01), biases N(0, 0.01), other weights
    N(0, 1/fan_in); stored as float32, run in float64 (outputs stored as float32).
  * Case 'clip': `data/utils.py:encode_video_with_synchformer('clip.mp4', 0, 10, 'cpu')` with
    `read_video` replaced by one that returns `synthetic_frames(237, seed=1)`
    (tests/fixtures/make_official.py) as (N, C, H, W) uint8 passed through the official `adjust_video_duration(frames, 10, 25)`
    (so padded to 250 frames by repeating the last one), and the cached extractor replaced by
    the shrunk `FeaturesUtils` behind a wrapper that records the transform's output and casts
    it to float64. Stored: the features (1, 240, 32), the transform output's per-frame,
    per-channel sums (250, 3) and its frames [0, 1, 120, 236, 237, 249] at every 16th pixel.
  * Case 'batch': `FeaturesUtils.encode_video_with_sync(x, batch_size=3)` on two 40-frame
    videos (seeds 2, 3), x = (frames / 255 - 0.5) / 0.5 in float64: (2, 32, 32), 4 windows each,
    run in chunks of 3 windows that straddle the two videos.
  * meta: the full-size (released) `Synchformer().state_dict()` key -> shape, and the official
    float32 run's relative difference from float64 (3.0e-7).
"""
import fnmatch
import hashlib
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from axturbo.convert import synchformer as convert
from axturbo.convert.common import ConversionError
from axturbo.data.video_io import fit_length
from axturbo.models import synchformer as sf
from tests import optional
from tests.fixture_io import load_fixture, rel_err, write_hf_folder
from tests.key_recorder import KeyRecorder
from tests.fixtures.make_official import synthetic_frames   # the fixture's frames
from tests.logical_mesh import logical_mesh

TOL = 1e-5
REPO = pathlib.Path(__file__).resolve().parents[1]


def _sha(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope='module')
def setup():
  sd, ins, outs, meta = load_fixture('synchformer_small')
  model = sf.from_config(meta['config'])
  params = convert.convert(sd, model, source='synchformer_small.npz', log=lambda _: None)
  clip = synthetic_frames(237, seed=1)
  batch = np.stack([synthetic_frames(40, seed=2), synthetic_frames(40, seed=3)])
  assert _sha(clip) == meta['frames_sha256']['clip']
  assert _sha(batch) == meta['frames_sha256']['batch']
  encode = jax.jit(lambda p, f: model.apply({'params': p}, f, method='encode_frames'))
  return model, params, encode, sd, ins, outs, meta, clip, batch


def test_segments_are_16_frame_windows_every_8():
  assert sf.num_sync_frames(10) == 250 and sf.num_segments(250) == 30
  assert sf.num_segments(16) == 1 and sf.num_segments(23) == 1 and sf.num_segments(24) == 2
  with pytest.raises(ValueError, match='at least 16 frames'):
    sf.num_segments(15)
  frames = jnp.arange(40)[None, :, None, None, None]
  seg = sf.segment_frames(frames)
  assert seg.shape == (1, 4, 16, 1, 1, 1)
  np.testing.assert_array_equal(seg[0, :, :, 0, 0, 0],
                                np.arange(4)[:, None] * 8 + np.arange(16)[None, :])



def test_bad_inputs_fail_with_a_clear_message(setup):
  model, params = setup[0], setup[1]
  with pytest.raises(ValueError, match='at least 16 frames'):
    model.apply({'params': params}, np.zeros((1, 15, 224, 224, 3), np.uint8),
                method='encode_frames')
  with pytest.raises(ValueError, match=r'segments must be \(N, 16, 224, 224, 3\)'):
    model.apply({'params': params}, np.zeros((2, 16, 112, 112, 3), np.float32))
  with pytest.raises(ValueError, match='channels-last'):
    sf.normalize_frames(np.zeros((16, 3, 224, 224), np.uint8))

def test_preprocessing_matches_official_transform(setup):
  """Padding (repeat the last frame) and scaling as the official reader and transform."""
  _, _, _, _, ins, outs, _, clip, _ = setup
  x = np.asarray(sf.normalize_frames(fit_length(clip, sf.num_sync_frames(10))))  # (250, H, W, 3)
  assert x.dtype == np.float32 and x.shape == (250, 224, 224, 3)
  picks = ins['clip/sample_frame_ids']
  want = np.moveaxis(outs['clip/frame_samples'], 1, -1)  # official (k, C, h, w)
  err = np.abs(x[picks][:, ::16, ::16] - want).max()
  # Every frame (the padded ones too) through its per-channel sums, stored as float32.
  sums = np.float32(x.astype(np.float64).sum(axis=(1, 2)))
  sum_err = rel_err(sums, outs['clip/frame_sums'])
  print(f'\npreprocessing: samples max abs {err:.2e}, per-frame sums rel {sum_err:.2e}')
  assert err <= 1e-6 and sum_err <= 1e-6


@pytest.mark.parametrize('case', ['clip', 'batch'])
def test_features_match_official(setup, case):
  _, params, encode, _, _, outs, _, clip, batch = setup
  frames = fit_length(clip, 250)[None] if case == 'clip' else batch
  got = np.asarray(encode(params, frames))
  want = outs[f'{case}/features']
  assert got.shape == want.shape
  print(f'\n{case}: rel {rel_err(got, want):.2e}, max abs {np.abs(got - want).max():.2e}')
  assert rel_err(got, want) <= TOL


def test_scanned_layers_and_sharded_segments_give_the_same_features(setup):
  """Stacked blocks (nn.scan) and windows sharded over a 2x2x2 CPU mesh by logical names."""
  model, _, _, sd, _, outs, meta, _, batch = setup
  scanned = sf.from_config(meta['config'], scan_layers=True)
  params = convert.convert(sd, scanned, source='fx', log=lambda _: None)
  boxed = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 16, 224, 224, 3))))['params']
  with logical_mesh(boxed) as shardings:
    placed = jax.device_put(params, shardings)
    got = jax.jit(lambda p, f: scanned.apply({'params': p}, f, method='encode_frames'))(
        placed, batch)
  assert rel_err(got, outs['batch/features']) <= TOL


def test_full_size_matches_the_released_state_dict(setup):
  """jax.eval_shape's parameter count and the converter's keys/shapes at the released size
  against the official full-size state dict (minus the documented unused 2-D patch embed)."""
  meta = setup[6]
  official = {k: tuple(v) for k, v in meta['full_size_state_dict'].items()}
  unused = {k for k in official if any(fnmatch.fnmatchcase(k, p) for p, _ in convert.UNUSED)}
  assert unused == {convert.PREFIX + 'patch_embed.proj.weight',
                    convert.PREFIX + 'patch_embed.proj.bias'}
  model = sf.Synchformer()
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, 224, 224, 3))))['params'])
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  live = sum(int(np.prod(s)) for k, s in official.items() if k not in unused)
  print(f'\nfull size: axturbo {ours:,d} parameters, official {live:,d} + unused '
        f'{sum(int(np.prod(official[k])) for k in unused):,d}')
  assert ours == live
  rec = KeyRecorder(convert.PREFIX)
  convert.synchformer_params(rec, model)
  assert rec.taken == {k: v for k, v in official.items() if k not in unused}


def _with(sd, **changes):
  out = dict(sd)
  for k, v in changes.items():
    if v is None:
      del out[k]
    else:
      out[k] = v
  return out


def test_converter_is_strict_and_names_the_key(setup):
  model, _, _, sd, _, _, _, _, _ = setup
  run = lambda arrays: convert.convert(arrays, model, source='s.pth', log=lambda _: None)
  foreign = dict(sd, **{'afeat_extractor.conv.weight': np.ones(3, np.float32),
                        'transformer.tok_emb': np.ones(2, np.float32)})
  run(foreign)  # the rest of the sync model is outside the extractor, as officially
  key = 'vfeat_extractor.blocks.1.timeattn.qkv.weight'
  with pytest.raises(ConversionError, match=r"missing tensor 'vfeat_extractor\.blocks\.1\."
                                            r"timeattn\.qkv\.weight'"):
    run(_with(sd, **{key: None}))
  with pytest.raises(ConversionError, match=r'blocks\.1\.timeattn\.qkv\.weight.*shape'):
    run(_with(sd, **{key: sd[key][:, :-1]}))
  with pytest.raises(ConversionError, match=r'vfeat_extractor\.head\.weight'):
    run(dict(sd, **{'vfeat_extractor.head.weight': np.ones((3, 32), np.float32)}))
  with pytest.raises(ConversionError, match='no Synchformer visual extractor'):
    run({'afeat_extractor.conv.weight': np.ones(3, np.float32)})
  with pytest.raises(ConversionError, match=r'blocks\.2\.'):  # the file is shallower
    convert.convert(sd, sf.from_config(dict(setup[6]['config'], depth=3)),
                    source='s.pth', log=lambda _: None)


@pytest.mark.e2e
def test_cli_round_trip(setup, tmp_path):
  """`python -m axturbo.convert ... --synchformer file.pth` on a torch.save'd random
  official-layout state dict (with foreign branches): the checkpoint holds the extractor and
  its sizes, and gives the official features."""
  torch = optional.torch()
  from axturbo.runtime import checkpoints
  from tests import test_convert
  _, _, _, sd, _, outs, meta, _, batch = setup
  stored = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  stored['afeat_extractor.conv.weight'] = torch.ones(3)
  torch.save(stored, tmp_path / 'synchformer_state_dict.pth')
  ckpt = {(k if k.startswith('discriminator_heads.') else 'student.' + k):
          torch.from_numpy(np.array(v)) for k, v in test_convert._official_state_dict().items()}
  torch.save({'state_dict': ckpt}, tmp_path / 'audiox_turbo.ckpt')
  t5_sd, _, _, t5_meta = load_fixture('hf_t5_tiny')
  t5_dir = write_hf_folder(tmp_path / 't5', t5_sd, t5_meta['hf_config'])
  m = test_convert._model_config()
  m.synchformer = meta['config']
  # The extractor makes 240 tokens for 10 s, the width of the fixture's proj_sync: its 4 frames
  # must span 10 s, or the converter refuses the pair (it would not load).
  m = type(m)({**m.to_dict(), 'video_fps': m.video.num_frames / 10.0})
  (tmp_path / 'cfg.py').write_text(
      'import json\nimport ml_collections as mlc\n\ndef get_config():\n'
      f'  return mlc.ConfigDict({{"model": json.loads({m.to_json()!r})}})\n')
  run = subprocess.run(
      [sys.executable, '-m', 'axturbo.convert', f'--config={tmp_path / "cfg.py"}',
       f'--checkpoint={tmp_path / "audiox_turbo.ckpt"}', f'--t5={t5_dir}',
       f'--synchformer={tmp_path / "synchformer_state_dict.pth"}', f'--out={tmp_path / "out"}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert '  synchformer ' in run.stdout
  params = checkpoints.load_params(tmp_path / 'out')
  section = checkpoints.load_model_config(tmp_path / 'out').synchformer
  model = sf.from_config(section)
  got = model.apply({'params': params['synchformer']}, batch, method='encode_frames')
  assert rel_err(got, outs['batch/features']) <= TOL


# ---------------------------------------------------------------------------------------------
# Sync features from raw video at generation time (a micro AudioX carrying a micro extractor).

def _sync_checkpoint(directory):
  """A micro AudioX whose 1 s of video (5 frames at 5 fps) meets a 2-window extractor:
  25 frames at 25 fps -> 2 windows x 8 tubelets = 16 sync tokens of width 32."""
  from axturbo.models import audiox
  from axturbo.runtime import checkpoints
  from tests import micro_train_config
  m = micro_train_config.get_config().model
  m.video.update(num_frames=5, sync_len=16, sync_dim=32)
  m.synchformer = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2, patch_size=8,
                       tubelet_size=2, num_frames=16, image_size=16, eps=1e-6)
  audiox.check_model_config(m)
  params = nn.unbox(audiox.init_params(audiox.build_model(m), m, jax.random.PRNGKey(0)))
  extractor = sf.from_config(m.synchformer)
  params['synchformer'] = nn.unbox(extractor.init(
      jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 16, 3)))['params'])
  return checkpoints.save_params(directory, params, m, {'kind': 'student'}), extractor


@pytest.fixture(scope='module')
def sync_ckpt(tmp_path_factory):
  from tests import media_files
  root = tmp_path_factory.mktemp('sync')
  ckpt, extractor = _sync_checkpoint(root / 'ckpt')
  video = media_files.write_mp4(root / 'clip.mp4', num_frames=12, fps=10)   # 1.2 s
  return ckpt, extractor, video, root


@pytest.mark.slow
def test_generator_computes_sync_features_from_the_video(sync_ckpt):
  from axturbo.data import video_io
  from axturbo.generation import generate
  from axturbo.generation import InputOptions, Request, SamplerOptions
  ckpt, extractor, video, _ = sync_ckpt
  gen = generate.Generator.load(ckpt)
  feats = gen.sync_features(str(video))
  frames = video_io.read_frames(str(video), 25, 16, fps=25)
  want = extractor.apply({'params': gen.params['synchformer']}, frames[None],
                         method='encode_frames')[0]
  assert feats.shape == (16, 32) and np.abs(feats).max() > 0.1
  np.testing.assert_allclose(feats, want, rtol=1e-6, atol=1e-6)
  clip, one_step = Request(video=str(video)), SamplerOptions(steps=1)
  [with_sync] = gen.generate(clip, one_step)
  [no_sync] = gen.generate(clip, one_step, inputs=InputOptions(no_sync=True))
  assert with_sync.meta['inputs']['sync'] == 'synchformer'
  assert no_sync.meta['inputs']['sync'] == 'zeros (no_sync)'
  # A .sync.npy beside the video is precomputed features: it wins over the extractor.
  np.save(video.with_name('clip.sync.npy'), np.ones((16, 32), np.float32))
  try:
    [cached] = gen.generate(clip, one_step)
  finally:
    video.with_name('clip.sync.npy').unlink()
  assert cached.meta['inputs']['sync'].endswith('clip.sync.npy')


@pytest.mark.e2e
def test_sample_cli_extracts_sync_and_rejects_bad_video(sync_ckpt):
  from tests import media_files
  ckpt, _, video, root = sync_ckpt
  out = root / 'out'
  run = lambda *a: subprocess.run([sys.executable, 'sample.py', f'--checkpoint={ckpt}',
                                   f'--out={out}', '--steps=1', *a], cwd=REPO,
                                  capture_output=True, text=True, timeout=600)
  r = run(f'--video={video}')
  assert r.returncode == 0, r.stderr[-3000:]
  [side] = out.glob('*.json')
  assert '"sync": "synchformer"' in side.read_text()
  (root / 'broken.mp4').write_bytes(b'\x00' * 100)
  one_frame = media_files.write_mp4(root / 'one.mp4', num_frames=1, fps=10)
  for bad in (root / 'broken.mp4', one_frame, root / 'missing.mp4'):
    r = run(f'--video={bad}')
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert bad.name in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]


@pytest.mark.slow
def test_prepared_dataset_computes_the_missing_sync_features(sync_ckpt, tmp_path):
  """The TFDS builder with an extractor (`data.prepare --sync_checkpoint`): a video line
  without a "sync_feature" gets the features of its crop window's 25 fps frames, a line with
  one keeps its file, and a .npy frame array (no frame rate) is skipped with a message."""
  import tensorflow_datasets as tfds
  from axturbo.data import tfds_builders, video_io
  from axturbo.generation import sync
  from axturbo.runtime import checkpoints
  from tests import media_files, micro_train_config
  ckpt, extractor, _, _ = sync_ckpt
  c = micro_train_config.get_config()
  c.model = checkpoints.load_model_config(ckpt)
  video = media_files.write_mp4(tmp_path / 'v.mp4', num_frames=25, fps=10)    # 2.5 s
  wav = media_files.write_wav(tmp_path / 'v.wav', media_files.tone(2.5, 16000), 16000)
  np.save(tmp_path / 'v_sync.npy', np.ones((16, 32), np.float32))
  np.save(tmp_path / 'frames.npy', np.zeros((5, 16, 16, 3), np.uint8))
  line = lambda v, s='': {'path': str(wav), 'video_path': str(v), 'sync_feature': str(s),
                          'caption': 'a dog', 'type': 'video_condition-audio'}
  lines = [line(video), line(video, tmp_path / 'v_sync.npy'), line(tmp_path / 'frames.npy'),
           line(video)]
  (tmp_path / 'm.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
  c.data.update(source='manifest', manifest=str(tmp_path / 'm.jsonl'))
  ex = sync.SyncExtractor.from_checkpoint(ckpt)
  builder = tfds_builders.build(c, 'sync', str(tmp_path / 'tfds'), sync_extractor=ex,
                                sync_batch=2)
  assert builder.info.metadata['sync_computed'] == {'train': 2}
  [message] = builder.info.metadata['skipped_messages']['train']
  assert 'frames.npy' in message and 'sync_feature' in message
  assert 'sync features of 2 videos computed' in tfds_builders.summary(builder)
  data = tfds.data_source('axturbo_manifest/sync', split='train', data_dir=str(tmp_path / 'tfds'))
  assert len(data) == 3
  for i in (0, 2):
    got = data[i]
    # The crop start (0, 1 or 2 s, drawn at build time) is the one whose 5 fps frames it holds.
    [start] = [s for s in (0.0, 1.0, 2.0) if np.array_equal(
        got['frames'], video_io.read_frames(str(video), 5, 16, 5.0, s))]
    frames = video_io.read_frames(str(video), 25, 16, 25, start, min_frames=2)
    want = extractor.apply({'params': ex.params}, frames[None], method='encode_frames')[0]
    assert np.abs(got['sync']).max() > 0.1
    np.testing.assert_allclose(got['sync'], want, rtol=1e-5, atol=1e-5)   # batched: ~2e-6
  np.testing.assert_array_equal(data[1]['sync'], np.ones((16, 32), np.float32))
  # Another extractor makes another dataset: the checkpoint is one of its settings.
  with pytest.raises(ValueError, match='sync_checkpoint'):
    tfds_builders.build(c, 'sync', str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match=r'makes \(16, 32\) features for 1 s.*\(16, 64\)'):
    ex.check_size(1.0, 16, 64)
  with pytest.raises(FileNotFoundError, match='not an axturbo checkpoint'):
    sync.SyncExtractor.from_checkpoint(tmp_path / 'tfds')


@pytest.mark.e2e
def test_prepare_command_line_computes_sync_features(sync_ckpt, tmp_path):
  from tests import media_files, script_runs
  ckpt, _, video, _ = sync_ckpt
  wav = media_files.write_wav(tmp_path / 'v.wav', media_files.tone(1.0, 16000), 16000)
  (tmp_path / 'm.jsonl').write_text(json.dumps(
      {'path': str(wav), 'video_path': str(video), 'caption': 'a dog',
       'type': 'video_condition-audio'}) + '\n')
  run = lambda *a: subprocess.run(
      [sys.executable, '-m', 'data.prepare', '--config=tests/micro_train_config.py',
       '--config.model.video.num_frames=5', '--config.data.source=manifest',
       f'--config.data.manifest={tmp_path / "m.jsonl"}', '--name=s',
       f'--data_dir={tmp_path / "tfds"}', f'--sync_checkpoint={ckpt}', *a],
      cwd=REPO, env=script_runs.env(tmp_path), capture_output=True, text=True, timeout=600)
  r = run('--config.model.video.sync_len=16')
  assert r.returncode == 0, r.stderr[-3000:]
  assert '1 train examples (0 files skipped, sync features of 1 videos computed)' in r.stdout
  r = run()   # the micro config's 4 sync tokens: not what this extractor makes for 1 s
  assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith(f'error: {ckpt}: the Synchformer makes '
                                                      '(16, 32) features for 1 s')

"""Full-size parameter counts per network (jax.eval_shape only; nothing is materialised).

Our count of each network equals the official state dict's count under that network's prefix
(tests/fixtures/official_state_dict_keys.tsv, the 1,384 tensors of the released model) minus
the tensors documented as unused (axturbo.convert.official.UNUSED, which includes the trunk's
DEAD_TENSORS) and minus the weight-norm gains `weight_g`, which are folded into the kernels.
The trunk's j = 1 half of every `cross_attn.to_kv` is also dead and is subtracted explicitly.
T5 is not in the official state dict; its count is Hugging Face's t5-base encoder.
"""
import ast
import fnmatch
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from axturbo.convert import official as convert_official
from axturbo.models import audiox
from configs import official

TSV = pathlib.Path(__file__).parent / 'fixtures' / 'official_state_dict_keys.tsv'
PREFIXES = {
    'trunk': ('model.model.',),
    'maf': ('maf_block.',),
    'video': (convert_official.VIDEO,),
    'clip': (convert_official.VIDEO + 'visual_encoder_model.',),
    'audio_prompt': (convert_official.AUDIO,),
    'vae': ('pretransform.model.',),
}
T5_BASE_ENCODER = 109_628_544


def _official_shapes() -> dict[str, tuple[int, ...]]:
  rows = [line.split('\t') for line in TSV.read_text().splitlines() if line]
  return {k: ast.literal_eval(s) for k, s, *_ in rows}


def _official_live_count(prefix: str, exclude: tuple[str, ...], shapes) -> int:
  total = 0
  for key, shape in shapes.items():
    if not key.startswith(prefix) or key.startswith(exclude) or key.endswith('.weight_g'):
      continue
    if any(fnmatch.fnmatchcase(key, p) for p, _ in convert_official.UNUSED):
      continue
    n = int(np.prod(shape))
    if key.endswith('cross_attn.to_kv.weight'):
      n //= 2  # rows h*2H + d*2 + j: only j = 0 is live
    total += n
  return total


@pytest.fixture(scope='module')
def counts():
  m = official.model_config()
  model = audiox.build_model(m)
  abstract = nn.unbox(jax.eval_shape(lambda k: audiox.init_params(model, m, k),
                                     jax.random.key(0)))
  return {name: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
          for name, tree in abstract.items()}


def test_per_network_counts_match_official_minus_unused(counts):
  shapes = _official_shapes()
  assert len(shapes) == 1384
  print('\nnetwork        axturbo         official (live)')
  for name, (prefix,) in PREFIXES.items():
    exclude = (convert_official.VIDEO + 'visual_encoder_model.',) if name == 'video' else ()
    want = _official_live_count(prefix, exclude, shapes)
    print(f'{name:13s} {counts[name]:>14,d} {want:>14,d}')
    assert counts[name] == want, name
  print(f'{"text":13s} {counts["text"]:>14,d} {T5_BASE_ENCODER:>14,d}  (HF t5-base encoder)')
  assert counts['text'] == T5_BASE_ENCODER


def test_documented_totals(counts):
  """The figures quoted in docs/architecture.md."""
  assert counts['trunk'] == 2_217_621_229 - 1_179_648 - 3_538_944 - 113_246_208
  assert counts['maf'] == 60_991_494
  assert counts['video'] == 31_977_217
  assert counts['clip'] == 87_849_216 - 1_536 - 393_216  # minus post-LN and projection
  # Folded weight norm: the official counts include 16,512 + 18,306 gains.
  assert counts['vae'] == 156_112_514 - 16_512 - 18_306
  assert counts['audio_prompt'] == 77_989_888 - 16_512 + 77_568  # encoder copy + projections

"""Checkpoints and configs agree exactly (docs/failures.md): weights the config does not use
are refused like missing ones, and every field of model_config.json and meta.json is checked
for type and range on load, one line naming the file and the field."""
import json

import flax.linen as nn
import jax
import pytest

from axturbo.generation import generate
from axturbo.models import audiox
from axturbo.models import fields
from axturbo.runtime import checkpoints
from tests import micro_train_config

import configs.official
import configs.tiny


@pytest.fixture(scope='module')
def micro(tmp_path_factory):
  m = micro_train_config.get_config().model
  assert m.trunk.depth == 2 and not m.trunk.scan_layers  # layers_0, layers_1 on disk
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(audiox.build_model(m), m, k)))(
      jax.random.PRNGKey(0))
  return checkpoints.save_params(tmp_path_factory.mktemp('fields') / 'student', params, m,
                                 {'kind': 'student', 'step': 3})


def _edited(micro, tmp_path, file, edit):
  import shutil
  copy = tmp_path / 'edited'
  shutil.copytree(micro, copy)
  value = json.loads((copy / file).read_text())
  edit(value)
  (copy / file).write_text(json.dumps(value))
  return copy


def test_shipped_configs_pass():
  for m in (configs.official.model_config(), configs.tiny.get_config().model,
            micro_train_config.get_config().model):
    assert fields.check(m) == []


@pytest.mark.slow  # a jitted micro init
def test_weights_the_config_does_not_use_are_refused(micro, tmp_path):
  generate.Generator.load(micro)  # the unedited checkpoint loads
  shallow = _edited(micro, tmp_path, checkpoints.CONFIG_FILE,
                    lambda c: c['trunk'].update(depth=1))
  with pytest.raises(ValueError) as e:
    generate.Generator.load(shallow)
  line = str(e.value)
  assert '\n' not in line and str(shallow) in line
  assert "['trunk']['layers']['block_1'] is in the checkpoint but not used by the config" in line


@pytest.mark.slow
@pytest.mark.parametrize('file,edit,needles', [
    ('model_config.json', lambda c: c['trunk'].update(depth=-1), ['model.trunk.depth', '>= 1']),
    ('model_config.json', lambda c: c['trunk'].update(embed_dim='32'),
     ['model.trunk.embed_dim must be an integer', "'32'"]),
    ('model_config.json', lambda c: c['maf'].update(dropout=1.5), ['model.maf.dropout']),
    ('model_config.json', lambda c: c['trunk'].update(dpeth=2), ['model.trunk.dpeth is not a field']),
    ('model_config.json', lambda c: c.update(time_shift=0), ['model.time_shift']),
    ('model_config.json', lambda c: c['vae'].update(strides=[2, 'x']) if 'vae' in c else
     c.update(sample_rate=16000.5), ['model.']),
    ('model_config.json', lambda c: c['text'].update(tokenizer='sentencepiece'),
     ['model.text.tokenizer must be one of']),
    ('meta.json', lambda c: c.update(step='five'), ["field 'step' must be an integer"]),
    ('meta.json', lambda c: c.update(step=-1), ["field 'step' must be >= 0"]),
    ('meta.json', lambda c: c.update(kind='Student'), ["field 'kind' must be one of"]),
    ('meta.json', lambda c: c.update(ema='yes'), ["field 'ema' must be true or false"]),
])
def test_every_json_field_is_checked_on_load(micro, tmp_path, file, edit, needles):
  edited = _edited(micro, tmp_path, file, edit)
  with pytest.raises(ValueError) as e:
    generate.Generator.load(edited)
  line = str(e.value)
  assert '\n' not in line and line.startswith(str(edited / file)), line
  for n in needles:
    assert n in line, line

"""Every parity fixture is documented in tests/fixtures/README.md with a generator that exists.

Runs no generator (that needs the official checkout): it parses the README's table and checks
each generator against the code. `make_official --only X` must be a key of
make_official.FIXTURES; `tests/make_hf_fixtures.py` must write X (its HF_FIXTURES).
"""
import re

from tests import fixture_io, make_hf_fixtures
from tests.fixtures import make_official

README = fixture_io.FIXTURES / 'README.md'
DATA_SUFFIXES = ('.npz', '.tsv')
# Fixtures whose generator could not be written here (the README row says why). Listed so a
# gap stays visible: adding a generator must remove the name from here. None at present.
KNOWN_MISSING = set()


def readme_rows() -> dict[str, str]:
  """{file: generator cell} from the README's table rows '| `file` | generator | holds |'."""
  rows = {}
  for line in README.read_text().splitlines():
    m = re.match(r'\|\s*`([^`]+)`\s*\|([^|]*)\|', line)
    if m:
      rows[m.group(1)] = m.group(2).strip()
  return rows


def test_every_fixture_file_has_a_readme_row():
  files = {p.name for p in fixture_io.FIXTURES.iterdir() if p.suffix in DATA_SUFFIXES}
  rows = readme_rows()
  assert files, 'no fixtures found'
  assert sorted(files - set(rows)) == [], 'fixtures without a README row'
  assert sorted(set(rows) - files) == [], 'README rows without a file'


def test_every_generator_exists():
  official_names = set(make_official.FIXTURES)
  hf_names = set(make_hf_fixtures.HF_FIXTURES)
  missing = set()
  for name, generator in readme_rows().items():
    if generator == 'missing':
      missing.add(name)
      continue
    m = re.fullmatch(r'`make_official --only (\S+)`', generator)
    if m:
      assert m.group(1) == name.removesuffix('.npz'), (name, generator)
      assert m.group(1) in official_names, f'{name}: no make_official generator {m.group(1)}'
    else:
      assert generator == '`python tests/make_hf_fixtures.py`', (name, generator)
      assert name.removesuffix('.npz') in hf_names, f'{name}: make_hf_fixtures does not write it'
  assert missing == KNOWN_MISSING
  # And each registered generator has its row (nothing generated silently undocumented).
  names = {n.removesuffix('.npz') for n in readme_rows()}
  assert official_names | hf_names <= names


def test_check_mode_compares_arrays_and_meta(tmp_path):
  """`--check`'s comparison flags a changed array and a changed meta, and passes a copy."""
  sd, ins, outs, meta = fixture_io.load_fixture('disc_head')
  fixture_io.save_fixture('disc_head', sd, ins, outs, meta, folder=tmp_path)
  committed = fixture_io.FIXTURES / 'disc_head.npz'
  assert make_official.compare('disc_head.npz', tmp_path / 'disc_head.npz', committed) == []
  # Numbers in the meta need only agree within the arrays' bound; other values exactly.
  assert make_official.meta_equal({'rel': 3.0358398331e-07, 'n': [1, 2]},
                                  {'rel': 3.0358398317e-07, 'n': [1, 2]})
  assert not make_official.meta_equal({'rel': 3.1e-07}, {'rel': 3.0e-07})
  assert not make_official.meta_equal({'n': 1}, {'n': 1.0})
  bumped = dict(outs, scores=outs['scores'] * (1 + 1e-3))
  fixture_io.save_fixture('disc_head', sd, ins, bumped, dict(meta, config={}), folder=tmp_path)
  problems = make_official.compare('disc_head.npz', tmp_path / 'disc_head.npz', committed)
  assert any('out/scores' in p for p in problems) and 'meta differs' in problems

"""docs/failures.md is checked: every table row names at least one test (`tests/x.py::name`
or `tests/x.py`), and every test it names exists, as a file and, where named, as a function of
that file."""
import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
DOC = REPO / 'docs' / 'failures.md'
_REF = re.compile(r'(tests/[\w/]+\.py)(?:::(\w+))?')


def rows(text: str) -> list[str]:
  """The body rows of the document's tables (header and separator rows left out)."""
  out, previous = [], ''
  for line in text.splitlines():
    if line.startswith('|') and not re.fullmatch(r'\|(\s*:?-+:?\s*\|)+', line.strip()):
      if previous.startswith('|'):   # a row after the header
        out.append(line)
    previous = line if line.startswith('|') else ''
  return out


def references(row: str) -> list[tuple[str, str | None]]:
  return [(m.group(1), m.group(2)) for m in _REF.finditer(row)]


def functions_of(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text())
  return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_the_parser_reads_rows_and_references():
  text = ('| case | what happens |\n|---|---|\n| a | b (`tests/test_x.py::test_y`, '
          '`tests/test_z.py`) |\n\n| case | what happens |\n|---|---|\n| c | d |\n')
  assert rows(text) == ['| a | b (`tests/test_x.py::test_y`, `tests/test_z.py`) |', '| c | d |']
  assert references(rows(text)[0]) == [('tests/test_x.py', 'test_y'), ('tests/test_z.py', None)]
  assert references('| c | d |') == []


def test_every_row_names_tests_that_exist():
  table = rows(DOC.read_text())
  assert len(table) > 40, len(table)
  unnamed = [row[:80] for row in table if not references(row)]
  assert not unnamed, f'rows of {DOC} that name no test: {unnamed}'
  missing = []
  for row in table:
    for path, name in references(row):
      file = REPO / path
      if not file.is_file():
        missing.append(path)
      elif name is not None and name not in functions_of(file):
        missing.append(f'{path}::{name}')
  assert not missing, f'{DOC} names tests that do not exist: {missing}'

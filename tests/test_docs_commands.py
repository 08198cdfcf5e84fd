"""The commands in README.md, the user guide (docs/guide/*.md) and the reference pages (docs/*.md;
not docs/research/, a record of past runs) are ones a user can run: every
```bash block's `python X.py` / `python -m M` names a script or module of this repository, every
`--flag` it passes is one that command defines (its `--helpfull`, run once per command), every
`--config.a.b=v` override names a field of the config it loads and a value of that field's type
(parsed by ml_collections as the command line would), and the files it reads from the repository
(`--config FILE`, `pip install -r FILE`, `bash FILE.sh`) exist. Nothing is trained or run
beyond `--helpfull`. Flags of other programs (pip, pytest, gcloud, srun) are not checked.
"""
import functools
import pathlib
import re
import shlex
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from axturbo.models import fields

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md')),
         *sorted((REPO / 'docs' / 'guide').glob('*.md'))]
EXTERNAL_MODULES = {'pip', 'pytest'}    # `python -m` targets that are not ours
SEPARATORS = {'&&', '||', ';', '|', '&', '(', ')'}
PLACEHOLDER = '...'                     # "the rest of the command above", in prose-like lines


def bash_blocks(path: pathlib.Path) -> list[str]:
  return re.findall(r'```bash\n(.*?)```', path.read_text(), re.S)


def shell_tokens(line: str) -> list[str]:
  lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def python_calls(tokens: list[str]) -> list[list[str]]:
  """The argv (after `python`) of every python call in one shell line, including the ones
  inside a quoted string passed to another program (`gcloud ... --command "python ..."`)."""
  calls, segment = [], []
  for tok in tokens + [';']:
    if tok not in SEPARATORS:
      segment.append(tok)
      continue
    for i, word in enumerate(segment):
      if word in ('python', 'python3'):
        calls.append(segment[i + 1:])
        break
      if ' ' in word and re.search(r'\bpython3?\s', word):   # a quoted nested command
        calls += python_calls(shell_tokens(word))
    segment = []
  return calls


def commands() -> list[tuple[str, str, list[str]]]:
  """(page, the line, python argv) for every python call in the pages' bash blocks."""
  out = []
  for page in PAGES:
    for block in bash_blocks(page):
      for line in block.replace('\\\n', ' ').splitlines():
        for argv in python_calls(shell_tokens(line)):
          out.append((page.relative_to(REPO).as_posix(), line.strip(), argv))
  return out


def other_file_refs() -> list[tuple[str, str]]:
  """(page, path) of `pip install -r FILE` and `bash FILE.sh` in the pages' bash blocks."""
  out = []
  for page in PAGES:
    for block in bash_blocks(page):
      for line in block.replace('\\\n', ' ').splitlines():
        tokens = shell_tokens(line)
        for a, b in zip(tokens, tokens[1:]):
          if a == '-r' or (a == 'bash' and b.endswith('.sh')):
            out.append((page.relative_to(REPO).as_posix(), b))
  return out


def target(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the python argv that names the program, its arguments)."""
  if argv[0] == '-m':
    return argv[:2], argv[2:]
  return argv[:1], argv[1:]


def program_file(prog: list[str]) -> pathlib.Path | None:
  if prog[0] == '-m':
    base = REPO / prog[1].replace('.', '/')
    for path in (base.with_suffix('.py'), base / '__main__.py'):
      if path.is_file():
        return path
    return None
  path = REPO / prog[0]
  return path if path.is_file() else None


@functools.lru_cache(maxsize=None)
def defined_flags(prog: tuple[str, ...]) -> frozenset[str]:
  """Every flag the program accepts, from one run of its help (absl: --helpfull, which lists
  the flags of every module it imports; argparse: --help). `[no]x` gives x and nox."""
  source = program_file(list(prog)).read_text()
  uses_argparse = 'argparse' in source and 'absl' not in source
  r = subprocess.run([sys.executable, *prog, '--help' if uses_argparse else '--helpfull'],
                     cwd=REPO, capture_output=True, text=True, timeout=600)
  text = r.stdout + r.stderr
  if uses_argparse:
    names = set(re.findall(r'(?<![\w-])--([A-Za-z][\w-]*)', text))
  else:
    names = set()
    for neg, name in re.findall(r'^\s+--(\[no\])?([A-Za-z][\w.]*):', text, re.M):
      names.add(name)
      if neg:
        names.add('no' + name)
  assert ('help' if uses_argparse else 'helpfull') in names, (prog, r.returncode, text[-2000:])
  return frozenset(names)


def config_path(args: list[str]) -> str | None:
  for i, a in enumerate(args):
    if a == '--config' and i + 1 < len(args):
      return args[i + 1]
    if a.startswith('--config='):
      return a[len('--config='):]
  return None


def overrides(args: list[str]) -> list[str]:
  """The --config.* arguments as single `--config.a.b=v` strings."""
  out = []
  for i, a in enumerate(args):
    if a.startswith('--config.'):
      if '=' in a or i + 1 == len(args) or args[i + 1].startswith('--'):
        out.append(a)
      else:
        out.append(f'{a}={args[i + 1]}')
  return out


def apply_overrides(config: str, extra: list[str]):
  """The config with the overrides applied by ml_collections, as the command line does."""
  argv = ['prog', f'--config={REPO / config}', *extra]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=fv, sys_argv=argv)
  fv(argv)
  return fv.config


CALLS = commands()


def test_the_pages_have_commands():
  pages = {page for page, _, _ in CALLS}
  assert 'README.md' in pages and len(pages) >= 6, sorted(pages)


@pytest.mark.parametrize('page,line,argv', CALLS, ids=[f'{p}:{a[:2]}' for p, _, a in CALLS])
def test_command(page, line, argv):
  prog, args = target(argv)
  if prog[0] == '-m' and prog[1].split('.')[0] in EXTERNAL_MODULES:
    return
  where = f'{page}: `{line}`'
  assert program_file(prog), f'{where}: no script or module {" ".join(prog)} in the repository'
  passed = [a for a in args if a.startswith('--') and not a.startswith('--config.') and a != '--']
  names = defined_flags(tuple(prog)) if passed else frozenset()   # --helpfull only where needed
  for a in passed:
    name = a[2:].split('=')[0]
    assert name in names, f'{where}: {" ".join(prog)} has no flag --{name}'
  assert PLACEHOLDER not in args or page != 'README.md', f'{where}: a placeholder in the README'
  extra = overrides(args)
  config = config_path(args)
  if extra:
    assert config, f'{where}: --config.* overrides without --config'
  if config:
    assert (REPO / config.split(':')[0]).is_file(), f'{where}: no config file {config}'
    try:
      c = apply_overrides(config, extra)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
      pytest.fail(f'{where}: an override does not apply to {config}: {type(e).__name__}: {e}')
    assert not fields.check(c.model), f'{where}: {fields.check(c.model)}'


@pytest.mark.parametrize('page,path', other_file_refs())
def test_files_the_pages_name_exist(page, path):
  assert (REPO / path).is_file(), f'{page}: {path} does not exist'


def test_the_checker_catches_what_it_should():
  """The checks fail on a wrong flag, a wrong config field and a wrong value type."""
  line = ('gcloud ssh --command "cd axturbo && python train.py --config configs/tiny.py '
          '--config.mesh.shape=\'(1,-1,1)\'" && python3 -m axturbo.eval --suite events')
  calls = python_calls(shell_tokens(line))
  assert calls == [['train.py', '--config', 'configs/tiny.py', '--config.mesh.shape=(1,-1,1)'],
                   ['-m', 'axturbo.eval', '--suite', 'events']]
  assert apply_overrides('configs/tiny.py', overrides(calls[0][1:])).mesh.shape == (1, -1, 1)
  assert 'workdir' in defined_flags(('train.py',))
  assert 'no_such_flag' not in defined_flags(('train.py',))
  with pytest.raises((AttributeError, KeyError)):
    apply_overrides('configs/tiny.py', ['--config.train.no_such_field=1'])
  with pytest.raises(flags.Error):
    apply_overrides('configs/tiny.py', ['--config.train.total_steps=many'])
  bad = apply_overrides('configs/tiny.py', ['--config.model.attention_impl=flash'])
  assert fields.check(bad.model)


def test_links_and_doc_paths_resolve():
  """Every `docs/....md` path named in the repository's text (code comments, help, docs) and
  every relative markdown link in README.md and docs/ points at a file: pages that move leave
  no dangling names behind."""
  texts = [p for p in REPO.rglob('*') if p.suffix in ('.py', '.md', '.sh', '.ipynb', '.txt')
           and not any(part.startswith('.') or part in ('out', 'build') for part in
                       p.relative_to(REPO).parts)]
  bad = []
  for path in texts:
    text = path.read_text(errors='replace')
    for name in set(re.findall(r'\bdocs/[\w/]+\.md', text)):
      if not (REPO / name).is_file():
        bad.append(f'{path.relative_to(REPO)}: {name}')
    if path.suffix == '.md':
      for link in set(re.findall(r'\]\(([^)#:\s]+\.(?:md|png))(?:#[^)]*)?\)', text)):
        if not (path.parent / link).is_file():
          bad.append(f'{path.relative_to(REPO)}: link {link}')
  assert not bad, bad


def python_blocks() -> list[tuple[str, str]]:
  return [(page.relative_to(REPO).as_posix(), block) for page in PAGES
          for block in re.findall(r'```python\n(.*?)```', page.read_text(), re.S)]


@pytest.mark.parametrize('page,block', python_blocks())
def test_python_examples_name_real_api(page, block):
  """The pages' Python examples parse, import names that exist and call them with keywords and
  attributes they have (nothing is loaded or generated)."""
  import ast
  import importlib
  import inspect
  tree = ast.parse(block)
  names = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module.startswith('axturbo'):
      module = importlib.import_module(node.module)
      for alias in node.names:
        assert hasattr(module, alias.name), f'{page}: {node.module} has no {alias.name}'
        names[alias.asname or alias.name] = getattr(module, alias.name)
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      func = node.func
      target = None
      if isinstance(func, ast.Name) and func.id in names:
        target = names[func.id]
      elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id in names):
        target = getattr(names[func.value.id], func.attr, None)
        assert target is not None, f'{page}: {func.value.id} has no {func.attr}'
      if target is None:
        continue
      params = inspect.signature(target).parameters
      for kw in node.keywords:
        assert kw.arg in params, f'{page}: {ast.unparse(func)}() takes no {kw.arg}='


@pytest.mark.parametrize('block,needle', [
    ('from axturbo.generation import Request\nRequest(txt="rain")', 'takes no txt='),
    ('from axturbo.generation import Generator\nGenerator.lod("ckpt")', 'has no lod'),
    ('from axturbo.generation import Generatr', 'has no Generatr')])
def test_the_example_check_catches_what_it_should(block, needle):
  with pytest.raises(AssertionError, match=needle):
    test_python_examples_name_real_api('page', block)

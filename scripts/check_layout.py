"""Checks docs/layout.md's arrows: no axturbo module imports from a folder above its own.

  python scripts/check_layout.py     # prints each offending import; exit status 1 if any
"""
import ast
import pathlib
import sys

# Folder (or top-level module) -> what it may import besides itself (docs/layout.md).
ALLOWED = {
    'models': set(),
    'flow': set(),
    'data': set(),
    'runtime': {'models', 'data', 'flow'},
    'train': {'runtime', 'models', 'data', 'flow'},
    'distill': {'runtime', 'models', 'data', 'flow'},
    'generation': {'runtime', 'models', 'data', 'flow'},
    'convert': {'runtime', 'models'},
    'eval': {'generation', 'convert', 'runtime', 'models', 'data', 'flow'},
    'evaluate': {'eval'},
    'lora': {'runtime'},
    'demo': {'eval', 'generation', 'convert', 'runtime', 'models', 'data', 'flow'},
    '__init__': set(),
}


def part(dotted: str) -> str:
  """'axturbo.runtime.sharding' -> 'runtime'."""
  return dotted.split('.')[1]


def imports(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      if node.module == 'axturbo':   # `from axturbo import flow`
        yield from (f'axturbo.{a.name}' for a in node.names)
      else:
        yield node.module


def main() -> int:
  root = pathlib.Path(__file__).resolve().parents[1] / 'axturbo'
  bad = []
  for path in sorted(root.rglob('*.py')):
    own = part('axturbo.' + '.'.join(path.relative_to(root).with_suffix('').parts))
    for name in imports(ast.parse(path.read_text())):
      if name.startswith('axturbo.'):
        other = part(name)
        if other != own and other not in ALLOWED[own]:
          bad.append(f'{path.relative_to(root.parent)}: imports {name} ({own} may not use {other})')
  print('\n'.join(bad) or 'layout ok: every import points down')
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())

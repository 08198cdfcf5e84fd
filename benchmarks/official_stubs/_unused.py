"""Import-only stand-ins: names the official modules import but never call on the inference
path that benchmarks/official_reference.py runs. Calling one raises, so a path that does need
the real package fails loudly instead of computing something else."""


def unused(module: str, name: str):
  """A class standing in for `module.name` that raises when constructed or called."""
  def fail(*args, **kwargs):
    raise NotImplementedError(f'{module}.{name} is an import-only stand-in '
                              '(benchmarks/official_stubs); install the real package')
  return type(name, (), {'__init__': fail, '__call__': fail})

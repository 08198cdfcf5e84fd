"""Generation: samplers, the `Generator` API, input preparation, media I/O, batch jobs and the
fused serving path.

The API in a few names (`axturbo.generation.request` explains each type):

    from axturbo.generation import Generator, Request, SamplerOptions
    gen = Generator.load('ckpt/')
    clips = gen.generate([Request(text='rain'), Request(text='a dog barks')],
                         SamplerOptions(steps=4, seed=0))
    from axturbo.generation import generate_long, LongOptions
    [clip] = generate_long(gen, Request(text='rain', duration_s=60), long=LongOptions())

The value types are imported here directly (numpy and the samplers' step rules only);
`Generator`, `Result` and `generate_long` are imported on first use (PEP 562), so that importing
a light module of this package (media, jobs) does not build the model stack.
"""
from axturbo.generation.request import InputOptions
from axturbo.generation.request import LongOptions
from axturbo.generation.request import Request
from axturbo.generation.request import SamplerOptions

_LAZY = {'Generator': 'generate', 'Result': 'generate', 'generate_long': 'longform'}

__all__ = ['Generator', 'InputOptions', 'LongOptions', 'Request', 'Result', 'SamplerOptions',
           'generate_long']


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(f'axturbo.generation.{_LAZY[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

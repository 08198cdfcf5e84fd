"""Activation functions by their Hugging Face config names (`hidden_act`, `dense_act_fn`)."""
from typing import Callable

import jax


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


_BY_NAME: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': jax.nn.relu,
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    # HF's 'gelu_new' and 'gelu_pytorch_tanh' are both the tanh approximation.
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'quick_gelu': quick_gelu,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
}


def hf_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation HF's ACT2FN gives for `name`; ValueError if we do not support it."""
  if name not in _BY_NAME:
    raise ValueError(f'unsupported activation {name!r}; expected one of {sorted(_BY_NAME)}')
  return _BY_NAME[name]


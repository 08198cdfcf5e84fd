"""A Generator with random weights for a config: latency does not depend on the weights."""


def random_generator(config, seed: int):
  """A Generator (kind 'teacher') for config.model with random weights, no files read."""
  import flax.linen as nn
  import jax
  from axturbo.data import tokenizers
  from axturbo.generation import generate
  from axturbo.models import audiox
  m = config.model
  model = audiox.build_model(m)
  params = jax.jit(lambda k: nn.unbox(audiox.init_params(model, m, k)))(jax.random.PRNGKey(seed))
  return generate.Generator(m, params, kind='teacher', meta={'weights': 'random'},
                            tokenizer=tokenizers.offline_tokenizer(m.text))

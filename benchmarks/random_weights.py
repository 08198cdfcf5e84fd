"""The Generator a benchmark times: a checkpoint's, or random weights for a config (latency does
not depend on the weights)."""
from etils import epath


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


def checkpoint_or_random(checkpoint: str | None, config, seed: int):
  """(Generator, a line saying where its weights come from) for --checkpoint DIR, else random
  weights of --config. Raises ValueError / FileNotFoundError for the command line to report."""
  if not checkpoint and config is None:
    raise ValueError('give --checkpoint DIR, or --config FILE for random weights')
  if not checkpoint:
    return random_generator(config, seed), 'random weights of --config'
  if not epath.Path(checkpoint).is_dir():   # a local folder or a URL (gs://...)
    raise FileNotFoundError(f'--checkpoint {checkpoint!r}: directory not found')
  from axturbo.generation import jobs
  gen = jobs.load_generator(checkpoint)
  return gen, f'checkpoint {checkpoint} (kind {gen.kind})'

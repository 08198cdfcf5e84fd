"""Official `discriminator_heads.{i}.net.*` tensors -> `DiscriminatorHeads` parameters."""
from axturbo.convert.common import StateDict, conv1d, stack_layers

# The official all_blocks wrapper builds one head per trunk block (24); only the first few run.
OFFICIAL_NUM_HEADS_BUILT = 24


def disc_head_params(sd: StateDict, in_channels: int = 64, hidden: int = 128) -> dict:
  """One `DiscriminatorHead` from `sd` scoped at 'discriminator_heads.{i}.'."""
  specs = ((in_channels, hidden, 3), (hidden, 2 * hidden, 4), (2 * hidden, 4 * hidden, 4),
           (4 * hidden, 1, 3))
  return {f'net_{2 * j}': conv1d(sd, f'net.{2 * j}', c_in, c_out, k)
          for j, (c_in, c_out, k) in enumerate(specs)}


def disc_heads_params(sd: StateDict, num_heads: int, in_channels: int = 64,
                      hidden: int = 128) -> dict:
  """Heads 0..num_heads-1 stacked for `DiscriminatorHeads`; heads num_heads..23 are skipped.

  `sd` is scoped at the DMD wrapper level (keys 'discriminator_heads.{i}.net.{0,2,4,6}.*').
  """
  heads = [disc_head_params(sd.scope(f'discriminator_heads.{i}.'), in_channels, hidden)
           for i in range(num_heads)]
  for i in range(num_heads, OFFICIAL_NUM_HEADS_BUILT):
    for j in (0, 2, 4, 6):
      for leaf in ('weight', 'bias'):
        sd.skip(f'discriminator_heads.{i}.net.{j}.{leaf}')
  return {'heads': stack_layers(heads)}

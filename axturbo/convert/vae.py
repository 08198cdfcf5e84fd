"""Official Oobleck VAE weights -> `axturbo.models.vae` parameter trees (weight norm folded).

`cfg` is anything with the `OobleckVAE` fields (channels, c_mults, strides, latent_dim,
in_channels, out_channels), e.g. the module instance itself.
"""
import numpy as np

from axturbo.convert.common import StateDict, fold_weight_norm, linear


def _widths(cfg) -> list[int]:
  return [cfg.channels * m for m in (1, *cfg.c_mults)]


def _wn_conv(sd: StateDict, key: str, c_in: int, c_out: int, k: int, bias: bool = True) -> dict:
  """Weight-normed Conv1d: g (out,1,1), v (out,in,k) -> {'kernel': (k, in, out), 'bias'}."""
  w = fold_weight_norm(sd.take(f'{key}.weight_g', (c_out, 1, 1)),
                       sd.take(f'{key}.weight_v', (c_out, c_in, k)))
  out = {'kernel': np.ascontiguousarray(w.transpose(2, 1, 0))}
  if bias:
    out['bias'] = sd.take(f'{key}.bias', (c_out,))
  return out


def _wn_conv_transpose(sd: StateDict, key: str, c_in: int, c_out: int, k: int) -> dict:
  """Weight-normed ConvTranspose1d: g (in,1,1) and v (in,out,k), norm over (out,k).

  Our kernel is the equivalent forward conv's: (k, in, out), flipped along k.
  """
  w = fold_weight_norm(sd.take(f'{key}.weight_g', (c_in, 1, 1)),
                       sd.take(f'{key}.weight_v', (c_in, c_out, k)))
  return {'kernel': np.ascontiguousarray(w.transpose(2, 0, 1)[::-1]),
          'bias': sd.take(f'{key}.bias', (c_out,))}


def _snake(sd: StateDict, key: str, c: int) -> dict:
  return {'alpha': sd.take(f'{key}.alpha', (c,)), 'beta': sd.take(f'{key}.beta', (c,))}


def _residual(sd: StateDict, key: str, c: int) -> dict:
  return {'snake_0': _snake(sd, f'{key}.layers.0', c),
          'conv_0': _wn_conv(sd, f'{key}.layers.1', c, c, 7),
          'snake_1': _snake(sd, f'{key}.layers.2', c),
          'conv_1': _wn_conv(sd, f'{key}.layers.3', c, c, 1)}


def encoder_params(sd: StateDict, cfg) -> dict:
  """`OobleckEncoder` tree from keys `layers.*` (sd scoped at '...encoder.')."""
  w, n = _widths(cfg), len(cfg.strides)
  out = {'conv_in': _wn_conv(sd, 'layers.0', cfg.in_channels, w[0], 7)}
  for i, s in enumerate(cfg.strides):
    key = f'layers.{1 + i}.layers'
    block = {f'res_{j}': _residual(sd, f'{key}.{j}', w[i]) for j in range(3)}
    block['snake'] = _snake(sd, f'{key}.3', w[i])
    block['conv'] = _wn_conv(sd, f'{key}.4', w[i], w[i + 1], 2 * s)
    out[f'block_{i}'] = block
  out['snake_out'] = _snake(sd, f'layers.{1 + n}', w[-1])
  out['conv_out'] = _wn_conv(sd, f'layers.{2 + n}', w[-1], 2 * cfg.latent_dim, 3)
  return out


def decoder_params(sd: StateDict, cfg) -> dict:
  """`OobleckDecoder` tree from keys `layers.*` (sd scoped at '...decoder.')."""
  w, n = _widths(cfg), len(cfg.strides)
  out = {'conv_in': _wn_conv(sd, 'layers.0', cfg.latent_dim, w[-1], 7)}
  for j in range(n):
    i, s = n - j, cfg.strides[n - j - 1]
    key = f'layers.{1 + j}.layers'
    block = {'snake': _snake(sd, f'{key}.0', w[i]),
             'conv_t': _wn_conv_transpose(sd, f'{key}.1', w[i], w[i - 1], 2 * s)}
    block.update({f'res_{r}': _residual(sd, f'{key}.{2 + r}', w[i - 1]) for r in range(3)})
    out[f'block_{j}'] = block
  out['snake_out'] = _snake(sd, f'layers.{1 + n}', w[0])
  out['conv_out'] = _wn_conv(sd, f'layers.{2 + n}', w[0], cfg.out_channels, 7, bias=False)
  return out


def vae_params(sd: StateDict, cfg) -> dict:
  """`OobleckVAE` params {'encoder', 'decoder'} from an sd scoped at 'pretransform.model.'.

  The same call reads `vae.ckpt['state_dict']` unscoped (its keys are `encoder.*`/`decoder.*`).
  """
  return {'encoder': encoder_params(sd.scope('encoder.'), cfg),
          'decoder': decoder_params(sd.scope('decoder.'), cfg)}


class _SkipView:
  """Stands in for a StateDict: marks each requested key as skipped instead of reading it."""

  def __init__(self, sd: StateDict):
    self.sd = sd

  def take(self, key: str, shape) -> np.ndarray:
    self.sd.skip(key)
    return np.ones((1,) * len(tuple(shape)), np.float32)


def skip_decoder(sd: StateDict, cfg) -> None:
  """Skips exactly the decoder tensors a VAE of `cfg` has (sd scoped at '...decoder.')."""
  decoder_params(_SkipView(sd), cfg)


def audio_prompt_params(sd: StateDict, cfg) -> dict:
  """`AudioPromptConditioner` params from an sd scoped at 'conditioner.conditioners.audio_prompt.'.

  The conditioner's VAE copy lives under `pretransform.model.`; only its encoder is used, the
  decoder tensors are skipped.
  """
  vae = sd.scope('pretransform.model.')
  skip_decoder(vae.scope('decoder.'), cfg)
  return {'encoder': encoder_params(vae.scope('encoder.'), cfg),
          'proj_features_128': linear(sd, 'proj_features_128', cfg.latent_seq_len,
                                      cfg.prompt_tokens),
          'proj_out': linear(sd, 'proj_out', cfg.latent_dim, cfg.output_dim)}

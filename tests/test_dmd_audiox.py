"""`dmd_objectives.audiox_networks` wires the distillation objectives to the real AudioX (tiny
config): both objectives and the student gradient trace with the right shapes. Shapes only
(jax.eval_shape): the numerics are covered on the bare trunk by tests/test_dmd.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from axturbo.distill import objectives as obj
from axturbo.models.audiox import build_model, init_params
from axturbo.models.disc_head import DiscriminatorHeads
from configs import official, tiny


def test_objectives_wire_up_with_audiox():
  """`audiox_networks` + both objectives trace on the tiny AudioX (shapes only: eval_shape)."""
  m = tiny.model_config()
  model = build_model(m)
  heads = DiscriminatorHeads(m.disc.num_heads, m.disc.in_channels, m.disc.hidden)
  n, t, c = 2, m.trunk.seq_len, m.trunk.io_channels
  params = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, m, jax.random.key(0))))
  hp = jax.eval_shape(lambda: nn.meta.unbox(heads.init(
      jax.random.key(0), jnp.zeros((m.disc.num_heads, n, t, c)))['params']))
  nets, cfg = obj.audiox_networks(model, heads), official.distill_config()
  cfg.disc_num_blocks = m.disc.num_heads
  feats = dict(text=jnp.zeros((n, m.text.max_length, m.cond_dim)),
               video=jnp.zeros((n, m.video.out_tokens, m.cond_dim)),
               audio=jnp.zeros((n, m.audio_prompt.prompt_tokens, m.cond_dim)))

  def both(p, h):
    d = obj.draw_step_randomness(jax.random.key(0), (n, t, c), cfg)
    g = jax.grad(lambda q: obj.student_objective(q, p, p, h, nets, feats, d, d['index'],
                                                 cfg)[0])(p)
    x0 = obj.student_sample(nets, p, feats, d, 1, cfg)
    return g, obj.fake_objective((p, h), p, nets, feats, x0, x0, d, cfg)[0]

  g, loss = jax.eval_shape(both, params, hp)
  assert loss.shape == () and jax.tree.structure(g) == jax.tree.structure(params)

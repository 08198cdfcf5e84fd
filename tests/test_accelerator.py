"""On an accelerator, the same computations as on the host CPU: two teacher train steps of the
micro config and a 4-step student generation agree with their CPU runs in the same process.

Marked `gpu`: skipped on a CPU-only machine (conftest.py). On a GPU or TPU host:
  JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu tests/test_accelerator.py
(`tpu,cpu` on a TPU VM). Matmuls run at float32 precision on both sides (XLA's default on a GPU
is TF32), so the tolerances below are float32 reduction-order ones.
"""
import jax
import numpy as np
import pytest

from tests import micro_train_config

pytestmark = pytest.mark.gpu


@pytest.fixture(scope='module')
def devices():
  accelerator = jax.devices()[0]
  if accelerator.platform == 'cpu':
    pytest.skip('no accelerator: jax.devices() are CPUs')
  return accelerator, jax.devices('cpu')[0]


def two_train_steps(device):
  """(losses, host params) after two micro teacher steps on a one-device mesh of `device`."""
  from axturbo.data import synthetic
  from axturbo.models import audiox
  from axturbo.runtime import optim, sharding
  from axturbo.train import state as state_lib, step as step_lib
  config = micro_train_config.get_config()
  model = audiox.build_model(config.model)
  tx = optim.make_optimizer(config.train.optim, config.train.total_steps)
  init_fn = state_lib.make_init_fn(model, config, tx)
  mesh = sharding.make_mesh((1, 1, 1), [device])
  _, shardings = state_lib.abstract_state(init_fn, mesh)
  state = state_lib.init_state(init_fn, mesh, config.seed)
  step = step_lib.jit_train_step(model, tx, config, mesh, shardings)
  batches, losses = synthetic.make_iterator(config), []
  with jax.default_matmul_precision('float32'):
    for _ in range(2):
      state, metrics = step(state, sharding.global_batch(next(batches), mesh))
      losses.append(float(metrics['loss']))
  return losses, jax.tree.map(np.asarray, state.params)


def test_train_steps_match_the_cpu(devices):
  accelerator, cpu = devices
  (got_losses, got), (want_losses, want) = two_train_steps(accelerator), two_train_steps(cpu)
  np.testing.assert_allclose(got_losses, want_losses, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), got, want)


def test_student_generation_matches_the_cpu(devices, micro_student_checkpoint):
  from axturbo.generation import Generator, Request, SamplerOptions
  requests = [Request(text='a dog barks'), Request(text='rain on a roof')]

  def generate(device):
    with jax.default_device(device), jax.default_matmul_precision('float32'):
      gen = Generator.load(micro_student_checkpoint)
      return [r.waveform for r in gen.generate(requests, SamplerOptions(seed=0))]

  got, want = generate(devices[0]), generate(devices[1])
  assert got[0].shape == want[0].shape and np.abs(want[0]).max() > 0
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())

"""Optional test dependencies, skipped with a reason that says why and where they come from."""
import pytest

TORCH_MISSING = ('torch is not installed: the converter tests and the Hugging Face / official '
                 'parity fixtures read .ckpt/.pth files with it; requirements-dev.txt installs '
                 "the CPU wheel on Python 3.11. CI's Python 3.12 env (jax 0.12, .ci/run) has no "
                 'CPU torch wheel here and skips these tests')


def torch():
  """`import torch`, or skip the test (module) with `TORCH_MISSING`."""
  return pytest.importorskip('torch', reason=TORCH_MISSING)

"""The install files agree: requirements-jax012.txt is requirements.txt with only its JAX stack
moved, and the accelerator extras in pyproject.toml pin requirements.txt's jax."""
import pathlib
import re
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
JAX_STACK = {'jax', 'jaxlib', 'flax'}


def _pins(name: str) -> dict[str, str]:
  """{package: requirement line} of a requirements file, comments and blank lines left out."""
  out = {}
  for line in (REPO / name).read_text().splitlines():
    line = line.split('#')[0].strip()
    if line:
      out[re.split(r'[=<>!~\[ ]', line, maxsplit=1)[0].lower()] = line
  return out


def test_jax012_differs_from_the_pinned_set_only_in_the_jax_stack():
  pinned, current = _pins('requirements.txt'), _pins('requirements-jax012.txt')
  assert pinned.keys() == current.keys(), (
      f'requirements-jax012.txt lacks {sorted(pinned.keys() - current.keys())} and adds '
      f'{sorted(current.keys() - pinned.keys())}: keep both files listing the same packages')
  differ = {k for k in pinned if pinned[k] != current[k]}
  assert differ == JAX_STACK, f'lines that differ: {sorted(differ)}; expected {sorted(JAX_STACK)}'
  assert current['jax'].split('==')[1] == current['jaxlib'].split('==')[1]


def test_accelerator_extras_pin_the_same_jax():
  jax = _pins('requirements.txt')['jax'].split('==')[1]
  extras = tomllib.loads((REPO / 'pyproject.toml').read_text())['project'][
      'optional-dependencies']
  assert {k: v for k, v in extras.items() if k != 'demo'} == {
      'cuda': [f'jax[cuda12]=={jax}'], 'tpu': [f'jax[tpu]=={jax}']}

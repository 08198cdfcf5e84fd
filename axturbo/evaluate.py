"""`python -m axturbo.evaluate`: the former name of `python -m axturbo.eval`, kept so that existing
commands and scripts still work."""
from axturbo.eval import cli

if __name__ == '__main__':
  cli.run()

"""`python -m axturbo.eval`: the evaluation CLI (axturbo/eval/cli.py)."""
from axturbo.eval import cli

cli.run()

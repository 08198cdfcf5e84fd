"""Data preparation; run each from the repository root as `python -m scripts.<name>`."""

"""Data preparation; run each from the repository root as `python -m data.<name>` (prepare,
build_embedded, make_demo_inputs)."""

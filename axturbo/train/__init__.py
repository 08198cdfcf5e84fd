"""Teacher training: its state, its pure step on a mesh and its log line (train.py)."""

"""Teacher training: state, optimizer/EMA, the pure train step, checkpoints and observability."""

"""4-step student distillation (distill.py): state, steps, observability."""

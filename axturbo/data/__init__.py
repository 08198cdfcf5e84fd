"""Deterministic, procedurally generated training and evaluation data (no downloads)."""

"""axturbo: a JAX/Flax reimplementation of AudioX-Turbo (anything-to-audio, 4-step)."""

"""Generation: samplers, the `Generator` API, input preparation, media I/O, batch jobs and the
fused serving path."""

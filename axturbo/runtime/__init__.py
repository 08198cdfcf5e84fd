"""What the teacher trainer and the distiller both stand on: mesh and sharding, checkpoints,
optimizers, logging and launch."""

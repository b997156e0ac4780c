"""Training: the stream runner, checkpoints, the device mesh, experiments."""

"""Training: the loop, optimisers and schedules, checkpoints, and running under torchrun."""

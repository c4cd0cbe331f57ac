"""The lowest floor: errors, atomic files, progress, the network policy, devices, processes (torchrun),
checkpoints and the credentials guard; it imports nothing else of the pipeline."""

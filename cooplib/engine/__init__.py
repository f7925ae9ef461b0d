"""Engine layer: run configs, the training loop, optimisers, metrics, run directories, sweeps, clusters, DDP.
May import cooplib.methods, models, data, losses and base; never analysis, report or book."""

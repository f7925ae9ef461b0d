"""Analysis layer: measurements of trained runs (diversity, perturbation, flatness, representations, adaptive depth); no plotting.
May import cooplib.engine and everything below it; never report or book."""

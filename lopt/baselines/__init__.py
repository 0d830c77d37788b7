"""Hand-designed optimizers behind one registry: `get(name, lr=...)`, `names()`, `spec(name)`."""

from lopt.baselines.registry import REGISTRY, Baseline, get, log_grid, names, spec

__all__ = ["REGISTRY", "Baseline", "get", "log_grid", "names", "spec"]

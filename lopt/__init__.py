"""lopt: learned optimizers in JAX. Every optimizer here is an optax transformation.

opt = lopt.load("checkpoints/<name>")            # a trained optimizer
opt = lopt.baselines.get("adamw", lr=1e-3)       # a hand-designed one
"""

from lopt import baselines, hypergrad, learned, programs
from lopt.checkpoint import CheckpointError, load, load_meta, read_manifest, save, shipped
from lopt.learned import MetaOptimizer

__all__ = [
    "baselines",
    "hypergrad",
    "learned",
    "programs",
    "CheckpointError",
    "load",
    "load_meta",
    "read_manifest",
    "save",
    "shipped",
    "MetaOptimizer",
]
__version__ = "0.1.0"

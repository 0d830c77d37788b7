"""lopt: learned optimizers in JAX. Every optimizer here is an optax transformation."""

from lopt import baselines

__all__ = ["baselines"]
__version__ = "0.1.0"

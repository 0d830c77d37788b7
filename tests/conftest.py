"""Test setup: eight fake CPU devices (for sharding tests), set before jax is imported anywhere.

Strict dtype promotion is not enabled globally: optax's own Adam (`decay ** count` with an int32
count) fails under it. Tests of lopt's own numerics use `jax.numpy_dtype_promotion("strict")`
locally instead.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

"""Spreading a population over devices: the leading (population) axis of every state leaf is
sharded over a one-axis mesh; theta is replicated. jit then partitions the vmapped estimator
step across devices by itself (GSPMD) — no hand-written communication. On a TPU pod, call
`jax.distributed.initialize()` first and the mesh spans every process's devices."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

AXIS = "population"


def population_mesh(num_workers: int) -> jax.sharding.Mesh | None:
    """A mesh over as many devices as divide the population evenly (None for one device)."""
    devices = jax.devices()
    count = max(d for d in range(1, len(devices) + 1) if num_workers % d == 0)
    if count == 1:
        return None
    return jax.make_mesh((count,), (AXIS,), devices=devices[:count], axis_types=(jax.sharding.AxisType.Auto,))


def population_placement(state: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """The sharding of each leaf of `state` (arrays or shape structs) over the population mesh:
    leading axis split across the mesh, scalars and leaves that do not divide evenly replicated
    (None without a mesh: the default device)."""
    if mesh is None:
        return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), state)
    split = NamedSharding(mesh, PartitionSpec(AXIS))
    whole = NamedSharding(mesh, PartitionSpec())
    size = mesh.shape[AXIS]
    return jax.tree.map(lambda leaf: split if len(leaf.shape) >= 1 and leaf.shape[0] % size == 0 else whole, state)


def shard_population(state: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """Place each leaf's leading axis across the mesh (scalars and empty leaves replicated)."""
    # committed even on one device: jit keys its cache on committedness, so an uncommitted first
    # state (from eager ops) made the second outer step compile the whole step again
    return jax.tree.map(jax.device_put, state, population_placement(state, mesh))


def replicated_placement(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """The sharding `replicate` gives each leaf of `tree`."""
    if mesh is None:
        return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), tree)
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def replicate(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
    if mesh is None:
        return jax.device_put(tree, jax.devices()[0])  # committed, as in `shard_population`
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))

"""The MetaOptimizer protocol and the registry of learned-optimizer kinds (for save/load)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import optax

Theta = Any


@runtime_checkable
class MetaOptimizer(Protocol):
    """A learned optimizer: meta-parameters `theta` and, given them, an optax transformation.

    `transform(theta)` closes over theta, so `jax.grad` or ES perturbations of theta flow
    through ordinary optax code. `num_steps` is the length of the training run the optimizer
    is used for (its training-progress features read step / num_steps).
    """

    kind: ClassVar[str]

    def init_meta(self, key: jax.Array) -> Theta: ...

    def transform(self, theta: Theta, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs: ...


KINDS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a frozen-dataclass MetaOptimizer loadable by its `kind`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to be registered")
    KINDS[cls.kind] = cls
    return cls


def to_config(meta_optimizer: Any) -> dict[str, Any]:
    """JSON-ready constructor arguments of a registered meta-optimizer (nested dataclasses as
    tables, tuples as lists)."""
    return dataclasses.asdict(meta_optimizer)


def from_config(kind: str, config: dict[str, Any]) -> Any:
    """Rebuild a meta-optimizer from its kind and constructor arguments (strictly checked)."""
    from lopt.config import from_dict

    if kind not in KINDS:
        raise ValueError(f"unknown learned-optimizer kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return from_dict(KINDS[kind], config, where=f"{kind} config")


def check_params(params: Any, name: str) -> None:
    """Learned optimizers read parameter values: they must be given, and be floating point."""
    if params is None:
        raise ValueError(f"{name}.update needs `params` (learned optimizers read parameter values)")
    for leaf in jax.tree.leaves(params):
        if not jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating):
            raise TypeError(f"{name} only handles floating-point parameters, got {leaf.dtype}")

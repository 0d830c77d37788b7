"""The MetaOptimizer protocol and the one registry of learned-optimizer kinds and their presets.

A new kind is one module: a frozen dataclass subclassing `LearnedKind`, decorated with
`@register` (plus `@preset("name")` factories, or `@register(preset="name")`), and one import
line in `lopt/learned/__init__.py`. Checkpoints (`lopt.save/load`), `lopt eval` and meta-train
configs find it here and ask it (`reads_progress`, `lr_tuning_grid`) rather than test names."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax

from lopt.config import from_dict

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


class LearnedKind:
    """Base of every registered kind: what checkpoint loading and `lopt eval` ask a kind,
    with the defaults of a kind that reads training progress and has no learning-rate hook.

    reads_progress: its updates read step / num_steps (then `lopt.load` needs a run length).
    lr_tuning_grid: multipliers `lopt eval` sweeps like a baseline's LR grid (empty: untuned
      only); a kind with a grid implements `scale_learning_rate`.
    """

    kind: ClassVar[str]
    reads_progress: ClassVar[bool] = True
    lr_tuning_grid: ClassVar[tuple[float, ...]] = ()

    @staticmethod
    def scale_learning_rate(theta: Theta, multiplier: Any) -> Theta:
        """theta whose updates are `multiplier` times as long (kinds with an lr_tuning_grid)."""
        raise NotImplementedError("this learned-optimizer kind has no learning-rate hook (empty lr_tuning_grid)")

    @classmethod
    def upgrade_saved_config(cls, config: dict[str, Any], array_paths: Sequence[str]) -> dict[str, Any]:
        """The constructor arguments of a checkpoint's manifest (`config`, beside the paths of its
        theta arrays), brought up to this version of the kind: where a kind whose saved form
        changed reads its older checkpoints. Unchanged by default."""
        return config


KINDS: dict[str, type] = {}
PRESETS: dict[str, Callable[[], Any]] = {}


def _add_preset(name: str, factory: Callable[[], Any]) -> None:
    if name in PRESETS:
        raise ValueError(f"learned-optimizer preset {name!r} is registered twice")
    PRESETS[name] = factory


def register(cls: type | None = None, *, preset: str | None = None) -> Any:
    """Class decorator: make a frozen-dataclass `LearnedKind` loadable by its `kind` (`lopt.load`)
    and, with `preset=`, selectable by that name with its default arguments (meta-train configs'
    `optimizer.preset`). Use as `@register` or `@register(preset="velo")`."""

    def add(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be registered")
        if not issubclass(cls, LearnedKind):
            raise TypeError(f"{cls.__name__} must subclass lopt.learned.base.LearnedKind")
        KINDS[cls.kind] = cls
        if preset is not None:
            _add_preset(preset, cls)
        return cls

    return add if cls is None else add(cls)


def preset(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Function decorator: a named configuration of a registered kind (e.g. `small_mlp`)."""

    def add(factory: Callable[[], Any]) -> Callable[[], Any]:
        _add_preset(name, factory)
        return factory

    return add


def to_config(meta_optimizer: Any) -> dict[str, Any]:
    """JSON-ready constructor arguments of a registered meta-optimizer (nested dataclasses as
    tables, tuples as lists)."""
    return dataclasses.asdict(meta_optimizer)


def from_config(kind: str, config: dict[str, Any]) -> Any:
    """Rebuild a meta-optimizer from its kind and constructor arguments (strictly checked)."""
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


def tensor_groups(params: Sequence[jax.Array], paths: Sequence[str]) -> list[tuple[list[int], str]]:
    """Leaf indices whose per-parameter work runs together, with their path: tensors whose path
    is not "xla" (they go through a Pallas kernel) alone; the others grouped by shape, in order
    of first appearance, to run as one vmapped computation over the stacked group.

    A GPT-2 has ~150 tensors but 9 shapes: grouped, a step launches a quarter as many kernels
    and is no longer bound by launches (docs/benchmarks.md)."""
    groups: list[tuple[list[int], str]] = []
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (p, path) in enumerate(zip(params, paths)):
        if path != "xla":
            groups.append(([i], path))
        elif p.shape in by_shape:
            by_shape[p.shape].append(i)
        else:
            by_shape[p.shape] = [i]
            groups.append((by_shape[p.shape], path))
    return groups


def stack_groups(leaves: Sequence[jax.Array], groups: Sequence[tuple[list[int], str]]) -> list[jax.Array]:
    """Each group's leaves as one float32 array [group size, *shape] (a reshape for a group of one)."""
    return [jnp.stack([leaves[i].astype(jnp.float32) for i in indices]) for indices, _ in groups]


def only_member(stacked: Any) -> Any:
    """The one tensor of a stacked group of one (indexing a leading axis of 1: no copy)."""
    return jax.tree.map(lambda x: x[0], stacked)

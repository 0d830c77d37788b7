"""The Task and TaskFamily protocols.

A `Task` is one training problem: `init(key) -> params`, `loss(params, batch) -> scalar` and
`batch(key, split) -> batch`. Tasks are frozen dataclasses registered as pytrees: their data
arrays are leaves (so a jitted function that takes a task receives the data as device buffers,
never as constants baked into the program) and their `TaskSpec` is static metadata.

A `TaskFamily` is a distribution over tasks: `sample(key) -> TaskSpec` draws a frozen, hashable
description (model kind, widths, depth, activation, dataset, batch size, ...), and
`build(spec) -> Task` turns it into a trainable task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax

Params = Any
Batch = Any
PRNGKey = jax.Array

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Frozen, hashable description of one task. Subclasses add the fields of their kind."""

    kind: ClassVar[str] = "task"

    def describe(self) -> str:
        """A short human-readable label, stable across runs (used in tables and cache keys)."""
        fields = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.kind}({fields})"


@runtime_checkable
class Task(Protocol):
    """One training problem (see module docstring)."""

    spec: TaskSpec

    def init(self, key: PRNGKey) -> Params: ...

    def loss(self, params: Params, batch: Batch) -> jax.Array: ...

    def batch(self, key: PRNGKey, split: str = "train") -> Batch: ...


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks (see module docstring)."""

    name: str

    def sample(self, key: PRNGKey) -> TaskSpec: ...

    def build(self, spec: TaskSpec) -> Task: ...


def check_split(split: str) -> None:
    """Raise a clear error for a split name other than 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")

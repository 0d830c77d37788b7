"""Task augmentation for meta-training: reparameterised weights and rescaled losses.

Metz et al. 2022 ("Practical tradeoffs between memory, compute, and performance in learned
optimizers"; VeLO) and Celo2 (`--aug=reparam`) train learned optimizers on tasks whose
parameters are rescaled by random factors with the gradients rescaled inversely, so a rule
cannot lean on the absolute scale of weights or gradients. For factors s (one per tensor, times
one global factor) the optimizer sees q = s·p and the loss k·L(q / s): ∂/∂q = (k/s)·∂L/∂p.
The loss factor k rescales losses and gradients together (a log-loss meta-objective is
unchanged by it up to a constant that cancels between antithetic arms).

Factors are drawn log-uniformly from each inner run's episode key, so both arms of an
antithetic pair and every window of one run see the same reparameterisation, a new run a new
one, and nothing is stored: the worker's parameters simply live in q-space.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

AUGMENT_TAG = 0x41554720


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """log10 half-widths of the factors: per tensor, global (all tensors) and the loss's.
    All zero: no augmentation."""

    tensor_log10: float = 0.0
    global_log10: float = 0.0
    loss_log10: float = 0.0

    def __post_init__(self) -> None:
        for name in ("tensor_log10", "global_log10", "loss_log10"):
            value = getattr(self, name)
            if not 0.0 <= value <= 4.0:
                raise ValueError(f"augmentation {name} must lie in [0, 4] (decades), got {value}")

    @property
    def active(self) -> bool:
        return bool(self.tensor_log10 or self.global_log10 or self.loss_log10)

    def wrap(self, task: Any, episode_key: jax.Array) -> Any:
        """`task` as this episode's reparameterised task (itself when augmentation is off)."""
        if not self.active:
            return task
        key = jax.random.fold_in(jax.random.wrap_key_data(episode_key), AUGMENT_TAG)
        tensor_key, global_key, loss_key = jax.random.split(key, 3)
        structure = jax.tree.structure(jax.eval_shape(task.init, jax.random.key(0)))
        uniform = lambda k, shape, half: jax.random.uniform(k, shape, jnp.float32, -half, half)
        global_log = uniform(global_key, (), self.global_log10)
        tensor_logs = uniform(tensor_key, (structure.num_leaves,), self.tensor_log10)
        scales = structure.unflatten(list(10.0 ** (tensor_logs + global_log)))
        return ReparameterisedTask(task, scales, 10.0 ** uniform(loss_key, (), self.loss_log10))


@dataclasses.dataclass(frozen=True)
class ReparameterisedTask:
    """`task` seen through q = scales·p and loss k·L (see the module docstring)."""

    task: Any
    scales: Any
    loss_scale: jax.Array

    @property
    def spec(self) -> Any:
        return self.task.spec

    def init(self, key: jax.Array) -> Any:
        return jax.tree.map(lambda p, s: p * s, self.task.init(key), self.scales)

    def loss(self, params: Any, batch: Any) -> jax.Array:
        original = jax.tree.map(lambda q, s: q / s, params, self.scales)
        return self.loss_scale * self.task.loss(original, batch)

    def batch(self, key: jax.Array, split: str = "train") -> Any:
        return self.task.batch(key, split)

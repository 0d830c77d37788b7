"""Stacked hyperoptimizers (Chandra et al. 2022, "Gradient Descent: The Ultimate Optimizer").

A stack [O_0, O_1, ..., O_K] trains the model with O_0, whose hyperparameters h_0 (its learning
rate, and for Adam its betas) are trained by O_1, whose hyperparameters h_1 are trained by O_2,
and so on; the top level's hyperparameters stay fixed. Each level's hypergradient is the
derivative of the newest loss through the last step only (the paper's detach-before-the-step
rule):

    ∂f(θ_{t−1})/∂h_0 = g_t · ∂θ_{t−1}/∂h_0 = g_t · T_0,   T_0 = ∂(O_0's update at t−1)/∂h_0
    ∂f/∂h_k          = (∂f/∂h_{k−1}) · T_k,              T_k = ∂(O_k's update of h_{k−1})/∂h_k

Each T_k is a forward-mode derivative (one `jax.linearize` of the level's step, one tangent per
learned hyperparameter) computed when the step is taken and kept until the next gradient
arrives, so the cost per level is one extra pass per learned hyperparameter. At every step the
hypergradients are formed bottom-up from the stored tangents, then the levels step top-down
(h_{K−1} first, θ last), each with its freshly updated hyperparameters, as in HD where α_t is
updated before θ_t.

A height-1 stack [sgd(α_0), sgd(β)] is exactly SGD-HD with α_0 and β; [adam(α_0,
learn=("lr",)), sgd(β)] is Adam-HD.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

BETA_CLAMP = (0.0, 1.0 - 1e-6)  # Chandra et al. clamp Adam's betas into [0, 1)

StepFn = Callable[[dict[str, jax.Array], Any, Any], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class Level:
    """One optimizer of a stack.

    hyperparams: initial values. learn: which of them the level above trains (ignored for the
      top level). init: params -> state. step: (hyperparams, grads, state) -> (updates, state),
      differentiable in hyperparams.
    """

    name: str
    hyperparams: dict[str, float]
    learn: tuple[str, ...]
    init: Callable[[Any], Any]
    step: StepFn

    def __post_init__(self) -> None:
        unknown = sorted(set(self.learn) - set(self.hyperparams))
        if unknown:
            raise ValueError(
                f"{self.name} has no hyperparameter {', '.join(unknown)}; it has {', '.join(self.hyperparams)}"
            )


def sgd(learning_rate: float, learn: Sequence[str] = ("lr",)) -> Level:
    """Plain gradient descent: updates −lr·g."""

    def step(h, grads, state):
        return jax.tree.map(lambda g: -h["lr"] * g, grads), state

    return Level("sgd", {"lr": learning_rate}, tuple(learn), lambda params: (), step)


class AdamLevelState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def adam(
    learning_rate: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    learn: Sequence[str] = ("lr", "b1", "b2"),
) -> Level:
    """Adam (Kingma & Ba 2015) with bias correction; betas clamped into [0, 1) as in Chandra et al."""

    def init(params):
        zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        return AdamLevelState(jnp.zeros((), jnp.int32), zeros, zeros)

    def step(h, grads, state):
        beta1, beta2 = (jnp.clip(h[k], *BETA_CLAMP) for k in ("b1", "b2"))
        count = state.count + 1
        t = count.astype(jnp.float32)
        mu = jax.tree.map(lambda m, g: beta1 * m + (1 - beta1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: beta2 * v + (1 - beta2) * g * g, state.nu, grads)
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        # max(·, 1e-30): sqrt's derivative at an all-zero second moment (a zero hypergradient on
        # the first step) would be inf·0 = NaN in the forward-mode tangent.
        updates = jax.tree.map(lambda m, v: -h["lr"] * (m / c1) / (jnp.sqrt(jnp.maximum(v / c2, 1e-30)) + eps), mu, nu)
        return updates, AdamLevelState(count, mu, nu)

    return Level("adam", {"lr": learning_rate, "b1": b1, "b2": b2}, tuple(learn), init, step)


class StackState(NamedTuple):
    """hyperparams[k]: level k's current hyperparameters (k < K; the top's are fixed).
    level_states[k]: level k's own state. tangents[k]: {name: ∂(level k's last update)/∂h_k[name]},
    shaped like level k's parameters (θ for k = 0, h_{k−1} otherwise)."""

    hyperparams: tuple[dict[str, jax.Array], ...]
    level_states: tuple[Any, ...]
    tangents: tuple[dict[str, Any], ...]


def _dot(a: Any, b: Any) -> jax.Array:
    return sum(
        jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def _step_with_tangents(
    level: Level, hyper: dict[str, jax.Array], grads: Any, state: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Take level's step and the forward-mode derivative of its updates for each learned hyperparameter."""
    updates, linear, new_state = jax.linearize(lambda h: level.step(h, grads, state), hyper, has_aux=True)
    tangents = {}
    for name in level.learn:
        direction = {k: jnp.asarray(1.0 if k == name else 0.0, jnp.float32) for k in hyper}
        tangents[name] = linear(direction)
    return updates, new_state, tangents


def stack(levels: Sequence[Level]) -> optax.GradientTransformationExtraArgs:
    """The stacked hyperoptimizer of `levels` (model optimizer first, fixed top level last)."""
    levels = tuple(levels)
    if not levels:
        raise ValueError("stack needs at least one level")
    for lower in levels[:-1]:
        if not lower.learn:
            raise ValueError(f"level {lower.name} learns no hyperparameter, so a level above it has nothing to train")
    height = len(levels) - 1

    def learned(k: int) -> dict[str, jax.Array]:
        return {n: jnp.asarray(levels[k].hyperparams[n], jnp.float32) for n in levels[k].learn}

    def full(k: int, learned_values: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {**{n: jnp.asarray(v, jnp.float32) for n, v in levels[k].hyperparams.items()}, **learned_values}

    def init(params):
        hyper = tuple(learned(k) for k in range(height))
        level_params = (params, *hyper)
        states = tuple(level.init(p) for level, p in zip(levels, level_params))
        tangents = tuple(
            {n: jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), level_params[k]) for n in levels[k].learn}
            for k in range(height)
        )
        return StackState(hyper, states, tangents)

    def update(grads, state, params=None, **extra_args):
        del params, extra_args
        level_grads = [grads]
        for k in range(height):  # bottom-up: ∂f/∂h_k from the stored tangents
            level_grads.append({n: _dot(level_grads[k], state.tangents[k][n]) for n in levels[k].learn})
        hyper = list(state.hyperparams)
        states = list(state.level_states)
        tangents = list(state.tangents)
        for k in range(height, 0, -1):  # top-down: level k trains h_{k−1}
            own = full(k, hyper[k]) if k < height else full(k, {})
            updates, states[k], new_tangents = _step_with_tangents(levels[k], own, level_grads[k], states[k])
            if k < height:
                tangents[k] = new_tangents
            hyper[k - 1] = jax.tree.map(jnp.add, hyper[k - 1], updates)
        own = full(0, hyper[0]) if height else full(0, {})
        if height:
            updates, states[0], tangents[0] = _step_with_tangents(levels[0], own, grads, states[0])
        else:
            updates, states[0] = levels[0].step(own, grads, states[0])
        return updates, StackState(tuple(hyper), tuple(states), tuple(tangents))

    return optax.GradientTransformationExtraArgs(init, update)

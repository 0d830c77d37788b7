"""Exact metagradients through a whole training run, in memory that grows as √T.

A training run of T steps is a function of its hyperparameters h (a learning-rate schedule,
per-example data weights, ...): s_0 = init(h), s_{t+1} = step(h, s_t, t), and a validation
objective f(h, s_T). Reverse-mode differentiation of f through all T steps gives the exact
metagradient df/dh (Engstrom, Ilyas, Chen, Feldmann, Moses & Madry 2025, "Optimizing ML Training
with Metagradient Descent"; Maclaurin, Duvenaud & Adams 2015 before them), but plain reverse mode
keeps every step's intermediate values: memory O(T).

`metagradient` keeps O(√T) instead, by nested rematerialisation — the idea behind MGD's REPLAY,
in its simplest two-level form (Griewank 1992; Chen et al. 2016, "Training deep nets with
sublinear memory cost"): the run is cut into segments of k ≈ √T steps, each segment is a
`jax.checkpoint`, and an outer `lax.scan` over segments saves only the state at each segment's
start (T/k states). The backward pass re-runs one segment at a time (k steps' residuals live at
once), so peak memory is O(T/k + k) = O(√T) states for one extra forward pass of compute.
`benchmarks/metagradient_memory.py` prints XLA's peak temporary memory against T beside plain
reverse mode.

The run is given as three functions (`Unroll`), so any model and any optax rule fit;
`schedule_unroll` builds one for a learning-rate schedule on an lopt task and
`weighted_data_unroll` for per-example data weights on a fixed pool (dataset selection). Where
training is not differentiable enough (a ReLU's kink, a hard max), MGD's advice is to smooth
it: a softplus for a ReLU, a softmax for a max, and small enough steps that the run stays stable
— a metagradient through a diverging run is finite only by accident.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

State = Any
Hyper = Any


class Unroll(NamedTuple):
    """A training run as a function of hyperparameters h.

    init(h) -> state; step(h, state, t) -> state, t the 0-based step as an int32 array;
    objective(h, state) -> scalar (the validation loss at the end of the run)."""

    init: Callable[[Hyper], State]
    step: Callable[[Hyper, State, jax.Array], State]
    objective: Callable[[Hyper, State], jax.Array]


def segment_length(steps: int) -> int:
    """k = ⌈√T⌉: the segment length that minimises T/k + k saved states."""
    return max(1, math.ceil(math.sqrt(steps)))


def _scan_steps(unroll: Unroll, h: Hyper, state: State, start: jax.Array | int, length: int) -> State:
    def body(s, t):
        return unroll.step(h, s, t), None

    state, _ = jax.lax.scan(body, state, start + jnp.arange(length, dtype=jnp.int32))
    return state


def run(unroll: Unroll, h: Hyper, steps: int, *, segment: int | None = None) -> State:
    """The state after `steps` steps. segment: steps per rematerialised segment (default
    `segment_length(steps)`); 0 runs one plain scan (reverse mode then keeps every step)."""
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    state = unroll.init(h)
    if segment == 0 or steps == 0:
        return _scan_steps(unroll, h, state, 0, steps)
    k = segment or segment_length(steps)
    if k < 0:
        raise ValueError(f"segment must be a positive number of steps (or 0 for plain reverse mode), got {k}")
    full, rest = divmod(steps, k)
    piece = jax.checkpoint(lambda h, s, start: _scan_steps(unroll, h, s, start, k))

    def outer(s, start):
        return piece(h, s, start), None

    state, _ = jax.lax.scan(outer, state, jnp.arange(full, dtype=jnp.int32) * k)
    if rest:
        state = jax.checkpoint(lambda h, s: _scan_steps(unroll, h, s, full * k, rest))(h, state)
    return state


def objective(unroll: Unroll, h: Hyper, steps: int, *, segment: int | None = None) -> jax.Array:
    """f(h): the validation objective after the whole run."""
    return unroll.objective(h, run(unroll, h, steps, segment=segment))


def first_non_finite(tree: Any) -> str | None:
    """The path of the first leaf of `tree` holding a NaN or an infinity ('' for a bare array),
    None when every value is finite."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not np.all(np.isfinite(np.asarray(leaf))):
            return jax.tree_util.keystr(path)
    return None


def check_finite(tree: Any, what: str = "metagradient") -> None:
    """Raise one line naming the first leaf of `tree` that holds a NaN or an infinity."""
    path = first_non_finite(tree)
    if path is not None:
        raise FloatingPointError(
            f"the {what} at {path or 'its root'} is not finite: the run diverged or is "
            "not differentiable there (smaller steps, or a smooth activation, give a finite one)"
        )


class NotDifferentiableError(ValueError):
    """The training run or its objective gives no usable metagradient with respect to h."""


def check_differentiable(h: Hyper) -> None:
    """Metagradients need floating-point hyperparameters; name the first leaf that is not."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(h):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "h"
            raise NotDifferentiableError(
                f"hyperparameter {where} has dtype {dtype}: metagradients need floating-point hyperparameters"
            )


def metagradient(
    unroll: Unroll, h: Hyper, steps: int, *, segment: int | None = None, check: bool = True
) -> tuple[jax.Array, Hyper]:
    """(f(h), df/dh), exact up to float rounding, through all `steps` steps in O(√T) memory
    (`run`'s segment). check: raise (`check_finite`) on a non-finite value or metagradient, and
    NotDifferentiableError on a metagradient that is exactly zero everywhere (an objective that is
    a step function of h, such as accuracy, or a `stop_gradient` in the way); leave it False
    inside `jit`. A run that JAX cannot differentiate in reverse mode (a `while_loop` with a
    data-dependent end) or integer hyperparameters also raise NotDifferentiableError."""
    check_differentiable(h)
    try:
        value, grad = jax.value_and_grad(lambda h: objective(unroll, h, steps, segment=segment))(h)
    except ValueError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "differentiat" not in first.lower():
            raise
        raise NotDifferentiableError(f"the training run cannot be differentiated in reverse mode: {first}") from None
    if check:
        check_finite(value, "meta-objective")
        check_finite(grad)
        if all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(grad)):
            raise NotDifferentiableError(
                "the metagradient is exactly zero in every coordinate: the objective does not depend on h "
                "differentiably (a step function such as accuracy, a hard argmax, or a stop_gradient)"
            )
    return value, grad


class Descent(NamedTuple):
    """What `descend` returns: the last finite h, the h before each outer step with its
    objective (`path`, `objectives`), and the step a non-finite metagradient stopped it at
    (None when it ran every step). `best` is the h of the lowest objective seen."""

    h: Hyper
    path: list[Hyper]
    objectives: list[float]
    stopped_at: int | None

    @property
    def best(self) -> Hyper:
        return self.path[int(np.argmin(self.objectives))] if self.objectives else self.h


def descend(
    unroll: Unroll,
    h: Hyper,
    steps: int,
    *,
    outer_steps: int,
    learning_rate: float,
    segment: int | None = None,
    clip: float = 1.0,
) -> Descent:
    """Metagradient descent (MGD): `outer_steps` steps of Adam on h along the exact
    metagradient, its global norm clipped to `clip`. A non-finite objective or metagradient ends
    the descent with the last finite h kept (nothing non-finite is returned)."""
    outer = optax.chain(optax.clip_by_global_norm(clip), optax.adam(learning_rate))
    value_and_grad = jax.jit(jax.value_and_grad(lambda h: objective(unroll, h, steps, segment=segment)))
    state = outer.init(h)
    path: list[Hyper] = []
    values: list[float] = []
    for i in range(outer_steps):
        value, grad = value_and_grad(h)
        if first_non_finite((value, grad)) is not None:
            return Descent(h, path, values, i)
        path.append(h)
        values.append(float(value))
        updates, state = outer.update(grad, state, h)
        h = optax.apply_updates(h, updates)
    return Descent(h, path, values, None)


# -- runs of lopt tasks ------------------------------------------------------------------------


def _batch_keys(key: jax.Array, steps: int) -> jax.Array:
    return jax.random.split(key, steps)


def averaged(unrolls: list[Unroll]) -> Unroll:
    """One run whose objective is the mean of several runs' objectives, all driven by the same h:
    e.g. the same schedule under different initialisations and data orders. MGD's remedy for a
    training run that is not smooth enough in h (Engstrom et al. 2025, §3: metagradients of one
    run follow its accidents; averaged over the run's randomness they follow the expected loss,
    a smoother function of h). Memory and compute grow with len(unrolls)."""
    if not unrolls:
        raise ValueError("averaged() needs at least one run")

    def init(h):
        return tuple(u.init(h) for u in unrolls)

    def step(h, states, t):
        return tuple(u.step(h, s, t) for u, s in zip(unrolls, states))

    def objective(h, states):
        return jnp.mean(jnp.stack([u.objective(h, s) for u, s in zip(unrolls, states)]))

    return Unroll(init, step, objective)


def schedule_unroll(
    task: Any,
    direction: optax.GradientTransformation,
    steps: int,
    key: jax.Array,
    *,
    validation_batches: int = 4,
    validation_key: jax.Array | None = None,
) -> Unroll:
    """Training `task` (an lopt task: init, loss, batch) for `steps` steps with the update
    −exp(h[t]) · direction(g): h is a [steps] vector of log learning rates, one per step, and
    `direction` an optax rule at unit learning rate (`optax.scale_by_adam()`, `optax.identity()`
    for SGD, ...). The objective is the mean test-split loss over `validation_batches` batches
    drawn from a key of their own (`validation_key` to draw others: the same run scored on
    fresh batches). The same key gives the same initial weights and batches for every h, so f is
    a deterministic function of h."""
    init_key, data_key, val_key = jax.random.split(key, 3)
    val_key = val_key if validation_key is None else validation_key
    params0 = task.init(init_key)
    batch_keys = _batch_keys(data_key, steps)
    val_data = [task.batch(k, "test") for k in jax.random.split(val_key, validation_batches)]

    def init(h):
        return params0, direction.init(params0)

    def step(h, state, t):
        params, opt_state = state
        grads = jax.grad(task.loss)(params, task.batch(batch_keys[t], "train"))
        updates, opt_state = direction.update(grads, opt_state, params)
        rate = jnp.exp(h[t])
        return jax.tree.map(lambda p, u: p - rate * u, params, updates), opt_state

    def validation(h, state):
        return jnp.mean(jnp.stack([task.loss(state[0], batch) for batch in val_data]))

    return Unroll(init, step, validation)


def weighted_data_unroll(
    loss_per_example: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params0: Any,
    pool: tuple[jax.Array, jax.Array],
    validation: tuple[jax.Array, jax.Array],
    steps: int,
    batch_size: int,
    learning_rate: float,
    key: jax.Array,
    direction: optax.GradientTransformation | None = None,
) -> Unroll:
    """Training on a fixed pool (x [N, ...], y [N]) where example i counts with weight
    σ(h[i]) (h: [N] logits; dataset selection as in MGD): each step draws `batch_size` indices
    (fixed by `key`), descends the weighted mean loss Σ σ(h_i) ℓ_i / Σ σ(h_i) with
    −learning_rate · direction(g) (SGD by default), and the objective is the mean loss on
    `validation` (x, y). loss_per_example(params, x, y) -> [batch] losses."""
    direction = direction or optax.identity()
    x, y = pool
    indices = jax.random.randint(key, (steps, batch_size), 0, x.shape[0])
    val_x, val_y = validation

    def init(h):
        return params0, direction.init(params0)

    def step(h, state, t):
        params, opt_state = state
        batch = indices[t]
        weights = jax.nn.sigmoid(h[batch])

        def weighted(p):
            return jnp.sum(weights * loss_per_example(p, x[batch], y[batch])) / jnp.maximum(jnp.sum(weights), 1e-6)

        updates, opt_state = direction.update(jax.grad(weighted)(params), opt_state, params)
        return jax.tree.map(lambda p, u: p - learning_rate * u, params, updates), opt_state

    def objective(h, state):
        return jnp.mean(loss_per_example(state[0], val_x, val_y))

    return Unroll(init, step, objective)

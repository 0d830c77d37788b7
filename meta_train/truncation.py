"""Truncated inner unrolls: a population of inner training runs advanced W steps at a time.

Each worker holds one inner run (params, optimizer state, step counter, horizon, episode key)
of a task shared by the population, so the population is one `vmap`. A window advances every
worker W steps in one `lax.scan`; a worker whose step counter reached its horizon is reset at
the start of the next window with fresh parameters, a new episode key and a newly sampled
horizon. Horizons are whole numbers of windows, so resets happen only at window boundaries —
which keeps every estimator's bookkeeping (PES accumulators, NRES perturbations) exact.
Workers start at random offsets into their first episode, so they do not reset in lockstep.

Minibatches come from `fold_in(episode_key, step)`: both arms of an antithetic pair see the
same data, and a resumed job sees the data it would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.meta_train.augment import Augmentation
from lopt.tasks.train import batch_step

NO_AUGMENTATION = Augmentation()

Theta = Any


@dataclasses.dataclass(frozen=True)
class TruncationSchedule:
    """Inner-run horizons: `constant` (= max_horizon) or `log_uniform` in [min, max], rounded up
    to whole windows of `truncation_length` steps."""

    truncation_length: int = 10
    min_horizon: int = 100
    max_horizon: int = 1000
    kind: str = "log_uniform"

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "log_uniform"):
            raise ValueError(f"unknown truncation schedule {self.kind!r}; valid: constant, log_uniform")
        if not 0 < self.truncation_length <= self.min_horizon <= self.max_horizon:
            raise ValueError(
                "need 0 < truncation_length <= min_horizon <= max_horizon, got "
                f"{self.truncation_length}, {self.min_horizon}, {self.max_horizon}"
            )

    def sample(self, key: jax.Array) -> jax.Array:
        """A horizon (int32, a multiple of truncation_length)."""
        if self.kind == "constant":
            horizon = jnp.float32(self.max_horizon)
        else:
            low, high = np.log(self.min_horizon), np.log(self.max_horizon)
            horizon = jnp.exp(jax.random.uniform(key, (), jnp.float32, low, high))
        windows = jnp.ceil(horizon / self.truncation_length)
        return (windows * self.truncation_length).astype(jnp.int32)


class Worker(NamedTuple):
    """One inner run. `start_loss` is its first window's mean loss (for divergence checks);
    `episode_key` is raw key data (uint32), so checkpoints store it as a plain array."""

    params: Any
    opt_state: Any
    step: jax.Array
    horizon: jax.Array
    episode_key: jax.Array
    start_loss: jax.Array


def _transform(meta_optimizer: Any, theta: Theta, horizon: jax.Array) -> optax.GradientTransformationExtraArgs:
    return optax.with_extra_args_support(meta_optimizer.transform(theta, num_steps=horizon))


def new_worker(
    task: Any,
    meta_optimizer: Any,
    theta: Theta,
    schedule: TruncationSchedule,
    key: jax.Array,
    augmentation: Augmentation = NO_AUGMENTATION,
) -> Worker:
    """A fresh inner run at step 0 (its parameters in the episode's augmented space)."""
    init_key, horizon_key, episode_key = jax.random.split(key, 3)
    horizon = schedule.sample(horizon_key)
    params = augmentation.wrap(task, jax.random.key_data(episode_key)).init(init_key)
    opt_state = _transform(meta_optimizer, theta, horizon).init(params)
    return Worker(
        params,
        opt_state,
        jnp.zeros((), jnp.int32),
        horizon,
        jax.random.key_data(episode_key),
        jnp.full((), jnp.nan, jnp.float32),
    )


def initial_worker(
    task: Any,
    meta_optimizer: Any,
    theta: Theta,
    schedule: TruncationSchedule,
    key: jax.Array,
    augmentation: Augmentation = NO_AUGMENTATION,
) -> Worker:
    """A fresh inner run whose step counter starts at a random whole-window offset."""
    worker_key, offset_key = jax.random.split(key)
    worker = new_worker(task, meta_optimizer, theta, schedule, worker_key, augmentation)
    windows = worker.horizon // schedule.truncation_length
    offset = jax.random.randint(offset_key, (), 0, windows) * schedule.truncation_length
    return worker._replace(step=offset)


def reset_if_done(
    task: Any,
    meta_optimizer: Any,
    theta: Theta,
    schedule: TruncationSchedule,
    worker: Worker,
    key: jax.Array,
    force: jax.Array,
    augmentation: Augmentation = NO_AUGMENTATION,
) -> tuple[Worker, jax.Array]:
    """Replace the worker by a fresh run if it reached its horizon (or `force`); returns (worker, reset)."""
    reset = (worker.step >= worker.horizon) | force
    fresh = new_worker(task, meta_optimizer, theta, schedule, key, augmentation)
    return jax.tree.map(lambda a, b: jnp.where(reset, a, b), fresh, worker), reset


WINDOW_BATCH_BYTES = 8 << 20  # per worker: a window's minibatches up to this size are drawn at once


def window_batches(task: Any, keys: jax.Array, split: str) -> Callable[[jax.Array], Any]:
    """i -> the minibatch of `split` from keys[i], for a window's scan.

    The window's batches are drawn before the scan in one vectorised call when they take at most
    WINDOW_BATCH_BYTES: drawn inside it, each step paid for its own threefry loops, which XLA runs
    rolled on CPUs (a few µs per tiny op; docs/benchmarks.md). They are indexed, not scanned over:
    as scan inputs of a vmapped population they were transposed to step-major and copied once more.
    Larger windows (big images, long truncations) draw each batch in its step, so a population's
    memory stays that of one batch."""
    draw = lambda key: task.batch(key, split)
    shape = jax.eval_shape(draw, keys[0])
    size = keys.shape[0] * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shape))
    if size > WINDOW_BATCH_BYTES:
        return lambda i: draw(keys[i])
    batches = jax.vmap(draw)(keys)
    return lambda i: jax.tree.map(lambda b: b[i], batches)


def unroll(
    task: Any,
    meta_optimizer: Any,
    theta: Theta,
    worker: Worker,
    length: int,
    meta_loss_split: str = "train",
    augmentation: Augmentation = NO_AUGMENTATION,
) -> tuple[Worker, jax.Array]:
    """Advance one worker `length` steps with the optimizer of `theta`.

    Returns the new worker and the per-step meta-losses [length]: the minibatch train loss
    before each update, or (meta_loss_split='test') the test loss of the same params on a
    test batch drawn from the same key.
    """
    opt = _transform(meta_optimizer, theta, worker.horizon)
    task = augmentation.wrap(task, worker.episode_key)
    # step t's minibatch comes from fold_in(episode key, t)
    episode = jax.random.wrap_key_data(worker.episode_key)
    keys = jax.vmap(lambda t: jax.random.fold_in(episode, t))(worker.step + jnp.arange(length))
    train_batch = window_batches(task, keys, "train")
    if meta_loss_split == "test":
        test_batch = window_batches(task, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), "test")

    def step(carry, i):
        params, opt_state, t = carry
        new_params, opt_state, loss = batch_step(task, opt, params, opt_state, train_batch(i))
        if meta_loss_split == "test":
            loss = task.loss(params, test_batch(i))
        return (new_params, opt_state, t + 1), loss

    (params, opt_state, t), losses = jax.lax.scan(
        step, (worker.params, worker.opt_state, worker.step), jnp.arange(length)
    )
    start_loss = jnp.where(jnp.isnan(worker.start_loss), jnp.mean(losses), worker.start_loss)
    return Worker(params, opt_state, t, worker.horizon, worker.episode_key, start_loss), losses


def diverged(losses: jax.Array, start_loss: jax.Array, factor: float) -> jax.Array:
    """A window diverged if any loss is non-finite or its mean exceeds `factor` × the episode's
    first-window loss (for positive losses)."""
    mean = jnp.mean(losses)
    exploded = (start_loss > 0) & (mean > factor * start_loss)
    return ~jnp.all(jnp.isfinite(losses)) | exploded

"""Inner training: any optax transformation on any task, as one `lax.scan` under `jit`.

`train` is written for one run and batched with `jax.vmap` (over seeds, learning rates or a
population of tasks that share a spec). Each step draws its minibatch inside `jit` from a key,
computes the loss and gradient, and calls the optimizer with the extra args `loss=` (the
minibatch loss, which learned optimizers read), `obj_fn=` (the minibatch objective, which
curvature-based optimizers such as Sophia's Hutchinson estimator need) and
`microbatch_grads_fn=` (the gradients of m microbatches of the minibatch, for gradient agreement
filtering) and `sampled_obj_fn=` (the loss against labels sampled from the model, for Sophia-G;
None on tasks without labels). The last two are functions, so an optimizer that does not call them costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
OptState = Any
EvalParamsFn = Callable[[OptState, Params], Params]


class TrainResult(NamedTuple):
    """Curves of one inner run.

    train_loss: [num_steps] minibatch loss at each step, before that step's update.
    eval_loss: [num_steps // eval_every + 1] mean test-split loss at steps 0, k, 2k, ... (empty
      when `eval_every` is 0).
    params: the final parameters (as the optimizer would evaluate them).
    """

    train_loss: jax.Array
    eval_loss: jax.Array
    params: Params
    batch_multiple: jax.Array | None = None  # [num_steps] batch size ÷ the task's, with `batch_growth`


class BatchGrowth(NamedTuple):
    """Adaptive batch sizes for a run: the AdAdaGrad schemes (Lau, Liu & Kolar 2024).

    Each step uses k half-batches of the task (k starts at 2: one task batch) and tests whether
    their gradients' spread says the minibatch gradient ḡ is too noisy; if so the next step's
    batch grows to what the test asks for (never shrinking, at most `max_multiple` task batches):

        norm test (Byrd et al. 2012):                 S² / k ≤ η² ‖ḡ‖²,   S² = Σ‖g_j − ḡ‖² / (k−1)
        inner-product test (Bollapragada et al. 2018): S²_ip / k ≤ θ² ‖ḡ‖⁴, S²_ip = Σ(⟨g_j, ḡ⟩ − ‖ḡ‖²)² / (k−1)
        k_next = clip(max(k, ⌈S² / (η² ‖ḡ‖²)⌉ or ⌈S²_ip / (θ² ‖ḡ‖⁴)⌉), 2, 2·max_multiple)

    with g_j the half-batch gradients (a half-batch's gradient variance is the per-example one
    over its size, so the tests read the same as the papers' per-example forms). Every step
    computes all 2·max_multiple half-batch gradients and masks the unused ones: shapes stay
    fixed under `jit`, so the cost is the largest batch's throughout. Tasks without an example
    axis (the synthetic ones) repeat their batch, see no spread and keep k = 2.

    References:
      Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods",
      arXiv:2402.11215, 2024. Byrd, Chin, Nocedal & Wu, "Sample size selection in optimization
      methods for machine learning", Math. Program. 2012. Bollapragada, Byrd & Nocedal,
      "Adaptive sampling strategies for stochastic optimization", SIAM J. Optim. 2018.
    """

    test: str = "norm"
    constant: float = 0.5
    max_multiple: int = 8

    def check(self) -> None:
        if self.test not in ("norm", "inner_product"):
            raise ValueError(f"batch growth test {self.test!r}: valid tests are 'norm' and 'inner_product'")
        if not self.constant > 0 or self.max_multiple < 1:
            raise ValueError("batch growth needs a positive test constant and max_multiple >= 1")


def train_step(
    task: Any, opt: optax.GradientTransformationExtraArgs, params: Params, opt_state: OptState, key: jax.Array
) -> tuple[Params, OptState, jax.Array]:
    """One inner step: sample a batch from `key`, take the gradient, apply the optimizer."""
    return batch_step(task, opt, params, opt_state, task.batch(key, "train"))


def batch_step(
    task: Any, opt: optax.GradientTransformationExtraArgs, params: Params, opt_state: OptState, batch: Any
) -> tuple[Params, OptState, jax.Array]:
    """One inner step on a given minibatch (`train_step` draws it from a key)."""
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    updates, opt_state = opt.update(grads, opt_state, params, **extra_args(task, batch, loss))
    return optax.apply_updates(params, updates), opt_state, loss


def growing_batch_step(
    task: Any,
    opt: optax.GradientTransformationExtraArgs,
    growth: BatchGrowth,
    params: Params,
    opt_state: OptState,
    halves: jax.Array,
    key: jax.Array,
) -> tuple[Params, OptState, jax.Array, jax.Array]:
    """One step on `halves` half-batches (see `BatchGrowth`); returns the next step's count."""
    most = 2 * growth.max_multiple
    batches = jax.vmap(lambda k: task.batch(k, "train"))(jax.random.split(key, growth.max_multiple))
    micro = jax.tree.map(lambda x: x.reshape(most, *x.shape[2:]), jax.vmap(lambda b: split_batch(b, 2))(batches))
    losses, grads = jax.vmap(jax.value_and_grad(task.loss), in_axes=(None, 0))(params, micro)
    weight = (jnp.arange(most) < halves).astype(jnp.float32)
    count = halves.astype(jnp.float32)
    mean = jax.tree.map(lambda g: jnp.tensordot(weight, g, 1) / count, grads)
    loss = jnp.sum(weight * losses) / count
    leaves, mean_leaves = jax.tree.leaves(grads), jax.tree.leaves(mean)
    mean_sq = sum(jnp.sum(m * m) for m in mean_leaves)
    if growth.test == "norm":
        spread = sum(jnp.sum((g - m) ** 2, axis=tuple(range(1, g.ndim))) for g, m in zip(leaves, mean_leaves))
        scale = growth.constant**2 * mean_sq
    else:
        inner = sum(jnp.sum(g * m, axis=tuple(range(1, g.ndim))) for g, m in zip(leaves, mean_leaves))
        spread = (inner - mean_sq) ** 2
        scale = growth.constant**2 * mean_sq**2
    variance = jnp.sum(weight * spread) / jnp.maximum(count - 1, 1.0)
    wanted = jnp.ceil(variance / jnp.maximum(scale, 1e-30))
    halves = jnp.clip(jnp.maximum(halves, jnp.nan_to_num(wanted, posinf=most).astype(jnp.int32)), 2, most)
    first = jax.tree.map(lambda x: x[0], batches)
    updates, opt_state = opt.update(mean, opt_state, params, **extra_args(task, first, loss))
    return optax.apply_updates(params, updates), opt_state, loss, halves


def extra_args(task: Any, batch: Any, loss: jax.Array) -> dict[str, Any]:
    """The extra arguments every optimizer `update` gets from a training step on `batch` (the
    module docstring says who reads which); the one place they are written, so the training
    loop and eval's cost measurement give optimizers the same inputs."""
    return {
        "loss": loss,
        "obj_fn": lambda p: task.loss(p, batch),
        "microbatch_grads_fn": lambda p, m: microbatch_grads(task, p, batch, m),
        "sampled_obj_fn": sampled_objective(task, batch),
    }


def sampled_objective(task: Any, batch: Any):
    """(params, key) -> the loss against labels sampled from the model (Sophia-G's estimator),
    or None for tasks whose loss is not a likelihood over labels (the synthetic ones)."""
    if not hasattr(task, "sampled_label_loss"):
        return None
    return lambda p, k: task.sampled_label_loss(p, batch, k)


def split_batch(batch: Any, num_microbatches: int) -> Any:
    """A minibatch as `num_microbatches` microbatches on a new leading axis.

    Dict batches (examples on axis 0 of every leaf) are split evenly; the batch size must be a
    multiple of `num_microbatches`. Array batches (the synthetic tasks' noise draw, which has no
    example axis) are repeated, so every microbatch is the whole batch."""
    if not isinstance(batch, dict):
        return jnp.broadcast_to(batch, (num_microbatches, *batch.shape))

    def split(x):
        if x.shape[0] % num_microbatches:
            raise ValueError(
                f"a batch of {x.shape[0]} examples cannot be split into {num_microbatches} equal microbatches"
            )
        return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])

    return jax.tree.map(split, batch)


def microbatch_grads(task: Any, params: Params, batch: Any, num_microbatches: int) -> Any:
    """Gradients of the task loss on each microbatch of `batch`, stacked on a leading axis."""
    return jax.vmap(lambda b: jax.grad(task.loss)(params, b))(split_batch(batch, num_microbatches))


def evaluate(task: Any, params: Params, key: jax.Array, num_batches: int = 4) -> jax.Array:
    """Mean test-split loss over `num_batches` minibatches drawn from `key`."""
    keys = jax.random.split(key, num_batches)
    return jnp.mean(jax.vmap(lambda k: task.loss(params, task.batch(k, "test")))(keys))


def train(
    task: Any,
    opt: optax.GradientTransformation,
    key: jax.Array,
    *,
    num_steps: int,
    eval_every: int = 0,
    num_eval_batches: int = 4,
    eval_params_fn: EvalParamsFn | None = None,
    batch_growth: BatchGrowth | None = None,
) -> TrainResult:
    """Train `task` with `opt` for `num_steps` steps from `key`; jit- and vmap-friendly.

    `eval_every` (dividing `num_steps`) adds a test-loss evaluation at steps 0, k, 2k, ...;
    `eval_params_fn(opt_state, params)` maps the iterate to the point to evaluate (schedule-free
    methods evaluate their averaged sequence, not the gradient point); `batch_growth` lets the
    batch size grow by an AdAdaGrad test (`BatchGrowth`), reported in `batch_multiple`.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if eval_every and num_steps % eval_every:
        raise ValueError(f"eval_every={eval_every} must divide num_steps={num_steps}")
    if batch_growth is not None:
        batch_growth.check()
    opt = optax.with_extra_args_support(opt)
    init_key, data_key, eval_key = jax.random.split(key, 3)
    params = task.init(init_key)
    opt_state = opt.init(params)
    step_keys = jax.random.split(data_key, num_steps)

    def to_eval(opt_state: OptState, params: Params) -> Params:
        return params if eval_params_fn is None else eval_params_fn(opt_state, params)

    def step(carry, step_key):
        params, opt_state, halves = carry
        if batch_growth is None:
            params, opt_state, loss = train_step(task, opt, params, opt_state, step_key)
        else:
            params, opt_state, loss, halves = growing_batch_step(
                task, opt, batch_growth, params, opt_state, halves, step_key
            )
        return (params, opt_state, halves), (loss, halves)

    start = (params, opt_state, jnp.asarray(2, jnp.int32))
    multiple = lambda halves: None if batch_growth is None else halves.reshape(num_steps) / 2  # noqa: E731
    if not eval_every:
        (params, opt_state, _), (train_loss, halves) = jax.lax.scan(step, start, step_keys)
        return TrainResult(train_loss, jnp.zeros((0,), jnp.float32), to_eval(opt_state, params), multiple(halves))

    def chunk(carry, chunk_keys):
        carry, outputs = jax.lax.scan(step, carry, chunk_keys)
        return carry, (outputs, evaluate(task, to_eval(carry[1], carry[0]), eval_key, num_eval_batches))

    initial_eval = evaluate(task, params, eval_key, num_eval_batches)
    chunk_keys = step_keys.reshape(num_steps // eval_every, eval_every, *step_keys.shape[1:])
    (params, opt_state, _), ((train_loss, halves), eval_loss) = jax.lax.scan(chunk, start, chunk_keys)
    return TrainResult(
        train_loss.reshape(num_steps),
        jnp.concatenate([initial_eval[None], eval_loss]),
        to_eval(opt_state, params),
        multiple(halves),
    )


class _NormState(NamedTuple):
    l2: jax.Array
    l1: jax.Array


def _record_norms() -> optax.GradientTransformation:
    """Identity on updates; its state keeps the global ℓ2 and ℓ1 norms of the last gradient."""

    def update(updates, state, params=None):
        leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(updates)]
        return updates, _NormState(
            jnp.sqrt(sum(jnp.sum(x * x) for x in leaves)), sum(jnp.sum(jnp.abs(x)) for x in leaves)
        )

    return optax.GradientTransformation(lambda params: _NormState(jnp.zeros(()), jnp.zeros(())), update)


class NormTrace(NamedTuple):
    """One run's minibatch losses [T] and its gradients' global ℓ2 and ℓ1 norms [T]."""

    train_loss: jax.Array
    l2: jax.Array
    l1: jax.Array


def gradient_norms(
    task: Any,
    opt: optax.GradientTransformation,
    key: jax.Array,
    *,
    num_steps: int,
    before: optax.GradientTransformation | None = None,
) -> NormTrace:
    """The run `train(task, chain(before, opt), key, num_steps=num_steps)` makes (same keys and
    minibatches), recording each step's norms of what enters `opt`: the gradient, or with
    `before` (e.g. `scale_by_adam()`) its output — what schedule refinement reads
    (`lopt.hypergrad.refine`)."""
    opt = optax.with_extra_args_support(optax.chain(before or optax.identity(), _record_norms(), opt))
    init_key, data_key, _ = jax.random.split(key, 3)
    params = task.init(init_key)

    def step(carry, step_key):
        params, opt_state = carry
        params, opt_state, loss = train_step(task, opt, params, opt_state, step_key)
        return (params, opt_state), (loss, opt_state[1].l2, opt_state[1].l1)

    _, (losses, l2, l1) = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(data_key, num_steps))
    return NormTrace(losses, l2, l1)

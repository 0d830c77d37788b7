"""What an optimizer costs on a task: time per update and optimizer-state memory.

The time is the optimizer's own: `update` + `apply_updates` on the task's parameters with a
fixed gradient, inside one compiled loop, so the model's forward and backward pass is left out
and the numbers of cheap and expensive optimizers are comparable. Extra passes an optimizer
asks for through the training loop's extra arguments (AdaHessian's Hessian-vector product,
XGrad's second gradient, gradient agreement filtering's microbatch gradients, Sophia's
estimator) are the optimizer's cost and are included. State memory is the bytes of
`opt.init(params)`, from shapes alone.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.eval.suites import entry_spec
from lopt.tasks import build
from lopt.tasks.train import extra_args


@dataclasses.dataclass(frozen=True)
class Cost:
    """step_seconds: median seconds per optimizer update; state_bytes: optimizer-state size."""

    step_seconds: float
    state_bytes: int


def state_bytes(opt: optax.GradientTransformation, params: Any) -> int:
    """Bytes of the optimizer state for `params`, computed from shapes (nothing is allocated)."""
    shapes = jax.eval_shape(opt.init, params)
    return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes)))


def measure(
    task_name: str, opt: optax.GradientTransformation, *, steps: int = 10, repeats: int = 5, seed: int = 0
) -> Cost:
    """Median time per optimizer update over `repeats` timed loops of `steps` updates each."""
    task = build(entry_spec(task_name))
    opt = optax.with_extra_args_support(opt)
    init_key, batch_key = jax.random.split(jax.random.key(seed))
    params = task.init(init_key)
    batch = task.batch(batch_key, "train")
    loss, grads = jax.value_and_grad(task.loss)(params, batch)

    @jax.jit
    def run(params, state):
        def body(_, carry):
            params, state = carry
            updates, state = opt.update(grads, state, params, **extra_args(task, batch, loss))
            return optax.apply_updates(params, updates), state

        return jax.lax.fori_loop(0, steps, body, (params, state))

    state = opt.init(params)
    carry = jax.block_until_ready(run(params, state))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        carry = jax.block_until_ready(run(*carry))
        times.append((time.perf_counter() - start) / steps)
    return Cost(statistics.median(times), state_bytes(opt, params))

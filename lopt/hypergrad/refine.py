"""Learning-rate schedule refinement (Defazio, Cutkosky, Mehta & Mishchenko 2023, "When, Why and
How Much? Adaptive Learning Rate Scheduling by Refinement").

Their last-iterate analysis makes linear decay, η_t ∝ 1 − t/T, the worst-case optimal schedule;
given the gradient norms G_t observed in a previous run of the same problem, the bound is
minimised instead by

    w_t ∝ G_t⁻² · Σ_{p>t} G_p⁻²                                     (w_T = 0)

which warms up where gradients are large early in training and anneals fast at the end. G is
first smoothed with a median filter of width τ·T (the paper's recipe against minibatch noise).
The refined weights are scaled to a peak of 1, so the learning rate keeps its meaning as the
schedule's largest value and is tuned over the same grid as linear decay's.

For Adam, lopt reads G_t = the ℓ1 norm of Adam's direction m̂/(√v̂+ε) (the LR excluded) and
tempers the rule: w_t ∝ G_t⁻ᵏ · Σ_{p>t} G_p⁻ᵏ with k = ADAM_POWER = 0.25 (k → 0 is linear decay
again). Where a network memorises its data, G falls 10-100× over the run and k = 1 or 2 turn that
into a warm-up that holds the LR near zero for half the next run. k was chosen on the `validation`
suite (geometric mean of refined ÷ linear-decay final loss over its four tasks: k = 1: 1.19,
0.5: 1.14, 0.25: 0.95, 0.125: 1.36; `benchmarks/schedule_refinement.py`).

    trace = tasks.train.gradient_norms(task, optax.scale_by_learning_rate(linear_decay(lr, T)), key,
                                       num_steps=T, before=optax.scale_by_adam())
    schedule = refined_schedule(lr, refined_weights(trace.l1, power=ADAM_POWER))
    opt = optax.adam(schedule)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

ADAM_POWER = 0.25  # k for Adam's direction norms (module docstring)


def median_filter(values: np.ndarray, width: int) -> np.ndarray:
    """Running median over a centred window of `width` points (edges padded with the nearest
    value), so a spike in one minibatch's gradient norm does not shape the schedule."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"median_filter takes a non-empty 1-D sequence, got shape {values.shape}")
    width = max(1, int(width))
    left, right = (width - 1) // 2, width // 2
    padded = np.concatenate([np.full(left, values[0]), values, np.full(right, values[-1])])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


def refined_weights(grad_norms: np.ndarray, tau: float = 0.1, power: float = 2.0) -> np.ndarray:
    """The refined schedule's shape from a run's gradient norms [T]: w_t ∝ Ĝ_t⁻ᵏ Σ_{p>t} Ĝ_p⁻ᵏ
    with Ĝ the median-filtered norms (window τ·T) and k = `power`, scaled to a maximum of 1;
    w_{T−1} = 0. k = 2 is the paper's SGD rule (ℓ2 norms); see the module docstring for Adam."""
    norms = np.asarray(grad_norms, np.float64)
    if not np.all(np.isfinite(norms)) or np.any(norms <= 0):
        raise ValueError("gradient norms must be finite and positive (was the first run diverging?)")
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    smooth = median_filter(norms, round(tau * norms.size))
    inverse = smooth ** -float(power)
    tail = np.concatenate([np.cumsum(inverse[::-1])[::-1][1:], [0.0]])  # Σ_{p>t}
    weights = inverse * tail
    return weights / weights.max() if weights.max() > 0 else weights


def refined_schedule(learning_rate: float | jnp.ndarray, weights: np.ndarray) -> optax.Schedule:
    """η_t = learning_rate · w_t (the last weight held after the end)."""
    table = jnp.asarray(weights, jnp.float32)
    last = table.shape[0] - 1
    return lambda count: learning_rate * table[jnp.minimum(count, last)]


def linear_decay(learning_rate: float | jnp.ndarray, num_steps: int) -> optax.Schedule:
    """η_t = learning_rate · (1 − t/T): the worst-case-optimal schedule refinement starts from."""
    return lambda count: learning_rate * jnp.maximum(1.0 - count / num_steps, 0.0)

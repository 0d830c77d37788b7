"""Metrics on loss curves (numpy): final loss, divergence, LR selection, steps to a target.

Conventions (documented here once, used by every report):
- final loss of a run: mean minibatch train loss over its last 10% of steps (at least one step),
  which smooths minibatch noise without favouring any optimizer;
- a run diverged if any train loss is non-finite or its final loss exceeds its initial loss
  (mean of the first min(10, T) steps): it ended worse than it started;
- the tuned learning rate minimises the mean final *train* loss over seeds (never the test
  loss; evaluation.md), with diverged runs counted as +inf.
"""

from __future__ import annotations

import numpy as np


def final_loss(train_loss: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Mean of the last `fraction` of the steps along the last axis; NaN if any is non-finite."""
    steps = train_loss.shape[-1]
    tail = train_loss[..., -max(1, int(round(steps * fraction))) :]
    return np.where(np.all(np.isfinite(tail), axis=-1), tail.mean(axis=-1), np.nan)


def initial_loss(train_loss: np.ndarray) -> np.ndarray:
    """Mean of the first min(10, T) steps along the last axis."""
    return train_loss[..., : min(10, train_loss.shape[-1])].mean(axis=-1)


def diverged(train_loss: np.ndarray) -> np.ndarray:
    """True where a run has a non-finite loss or ends above its initial loss (see module doc)."""
    final = final_loss(train_loss)
    with np.errstate(invalid="ignore"):
        worse = final > initial_loss(train_loss)
    return ~np.all(np.isfinite(train_loss), axis=-1) | ~np.isfinite(final) | worse


def tuned_index(train_loss: np.ndarray) -> int:
    """Index (axis 0) of the learning rate with the lowest mean final loss over seeds (axis 1).

    train_loss: [num_lrs, num_seeds, num_steps]. Diverged runs count as +inf; if every LR
    diverges, the lowest learning rate is returned.
    """
    final = np.where(diverged(train_loss), np.inf, final_loss(train_loss))
    mean = final.mean(axis=1)
    return int(np.argmin(mean)) if np.any(np.isfinite(mean)) else 0


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along the last axis (the first steps average what exists)."""
    window = max(1, min(window, curve.shape[-1]))
    # float64: a float32 running sum of large early losses cancels catastrophically against a
    # tiny final loss (a curve then never "reaches" its own final value).
    cumulative = np.cumsum(np.asarray(curve, np.float64), axis=-1)
    shifted = np.concatenate([np.zeros_like(cumulative[..., :window]), cumulative[..., :-window]], axis=-1)
    counts = np.minimum(np.arange(1, curve.shape[-1] + 1), window)
    return (cumulative - shifted) / counts


def steps_to_target(curve: np.ndarray, target: float, window: int | None = None) -> int | None:
    """First step (1-based count) at which the smoothed curve reaches `target`, else None.

    The default window is the final-loss window (10% of the steps), so a curve reaches its own
    final loss at its last step at the latest. A relative tolerance of 1e-6 absorbs rounding.
    """
    if window is None:
        window = max(1, int(round(curve.shape[-1] * 0.1)))
    reached = np.nonzero(smooth(curve, window) <= target + 1e-6 * abs(target))[0]
    return int(reached[0]) + 1 if reached.size else None


def geometric_mean(values: np.ndarray) -> float:
    """Geometric mean of positive values; inf if any is inf or NaN."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        return float("inf")
    return float(np.exp(np.mean(np.log(values))))


def iqm(values: np.ndarray) -> float:
    """Interquartile mean (Agarwal et al. 2021, "Deep RL at the edge of the statistical
    precipice"; the aggregate Celo 2025 uses for optimizers): the mean of the middle 50% of the
    sorted values, trimming a quarter at each end (fractional weights at the cut points, so it
    is defined for any count). +inf values sort last and are trimmed first; NaN if no value or
    an infinite value survives the trim."""
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = values.size
    if n == 0:
        return float("nan")
    low, high = 0.25 * n, 0.75 * n
    weights = np.clip(np.minimum(np.arange(1, n + 1), high) - np.maximum(np.arange(n), low), 0.0, None)
    kept = weights > 0
    if not np.all(np.isfinite(values[kept])):
        return float("nan")
    return float(np.sum(weights[kept] * values[kept]) / np.sum(weights))


def bootstrap_interval(
    values: np.ndarray, statistic=iqm, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over resamples (with replacement) of `values`."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(values[rng.integers(0, values.size, values.size)]) for _ in range(resamples)])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))

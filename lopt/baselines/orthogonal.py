"""Orthogonalised-momentum rules beyond Muon: NorMuon, AdaMuon, and the generalist's start.

Each is a direction-only `scale_by_X` for matrices (rank ≥ 2; conv kernels as [fan_in, fan_out],
every axis but the last being fan-in, as lopt's generalist reads them) and a full optimizer `X`
that gives every other tensor Adam, like `optax.contrib.muon`. Newton–Schulz is Muon's quintic
iteration (Jordan et al. 2024), shared with the generalist.

- NorMuon (Li et al. 2025, "NorMuon: Making Muon more efficient and scalable", arXiv 2510.05491;
  reference implementation zichongli5/NorMuon): M ← βM + (1−β)G; U = (1−β)G + βM (Nesterov);
  O = NS(U); per output neuron j, v_j ← β₂v_j + (1−β₂)·mean_i O_ij²; Ô = O / (√v + ε), rescaled
  to O's Frobenius norm; times √max(1, fan_out/fan_in). β = β₂ = 0.95.
- AdaMuon (Si et al. 2025, "AdaMuon: Adaptive Muon optimizer", arXiv 2507.11005): momentum,
  then NS of it, then an elementwise second moment of the orthogonalised direction,
  V ← β₂V + (1−β₂)·O², Ô = O / (√V + ε), then RMS alignment Ô · 0.2·√(mn) / ‖Ô‖_F so the update
  has Adam's typical RMS of 0.2 (the paper's order; the Nesterov form of U as in NorMuon).
- ortho_adam: "Adam's direction, orthogonalised on matrices, unit RMS", i.e.
  d = unit_rms(NS(m / √(v + ε))) with m, v exponential averages (β 0.9 / 0.95, no bias
  correction: the unit-RMS output makes any per-tensor factor irrelevant) — exactly the rule
  lopt's generalist starts from (`init="adam"`) with its network's small random weights at zero.
  Named for what it is, so that results can say when a meta-trained optimizer beats it.

`*_cosine` entries in the registry run these with linear warm-up over 5% of the run and cosine
decay to 0 (the generalist's own schedule).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned.generalist import (
    GRADIENT_CLIP,
    LEARNED,
    OTHER,
    GeneralistOptimizer,
    as_matrix,
    newton_schulz,
    schedule_factor,
    unit_rms,
)

ADAMUON_RMS = 0.2


def is_matrix(x: jax.Array) -> bool:
    return x.ndim >= 2


def _matrix_labels(params: Any) -> Any:
    return jax.tree.map(lambda p: "matrix" if is_matrix(p) else "other", params)


def _generalist_labels(params: Any) -> Any:
    """The generalist's own split (matrices, not embeddings or biases), in this module's names."""
    names = {LEARNED: "matrix", OTHER: "other"}
    return jax.tree.map(names.get, GeneralistOptimizer().labels(params))


class OrthogonalState(NamedTuple):
    """Momentum and second moment (per output neuron for NorMuon, per element otherwise)."""

    momentum: Any
    second: Any


def _orthogonal_rule(second_shape, direction, beta: float, beta2: float) -> optax.GradientTransformation:
    """Shared skeleton: momentum, Nesterov blend, NS, then `direction(O, v_old) -> (Ô, v_new)`."""

    def init(params):
        return OrthogonalState(
            jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda p: jnp.zeros(second_shape(p), p.dtype), params)
        )

    def update(updates, state, params=None):
        del params
        momentum = jax.tree.map(lambda m, g: beta * m + (1.0 - beta) * g, state.momentum, updates)

        def leaf(g, m, v):
            blended = (1.0 - beta) * g + beta * m
            o = newton_schulz(as_matrix(blended))
            out, v = direction(o, v.reshape(second_shape(o)), beta2)
            return out.reshape(g.shape), v.reshape(second_shape(g))

        pairs = jax.tree.map(leaf, updates, momentum, state.second)
        outer = jax.tree.structure(updates)
        directions, second = jax.tree.transpose(outer, jax.tree.structure((0, 0)), pairs)
        return directions, OrthogonalState(momentum, second)

    return optax.GradientTransformation(init, update)


def scale_by_normuon(beta: float = 0.95, beta2: float = 0.95, eps: float = 1e-10) -> optax.GradientTransformation:
    """NorMuon's direction for matrices (module docstring); the per-neuron second moment has one
    entry per output unit (the last axis)."""

    def direction(o, v, b2):
        v = b2 * v + (1.0 - b2) * jnp.mean(jnp.square(o), axis=0)
        normalised = o / (jnp.sqrt(v) + eps)
        normalised = normalised * (jnp.linalg.norm(o) / (jnp.linalg.norm(normalised) + eps))
        return normalised * jnp.sqrt(jnp.maximum(1.0, o.shape[1] / o.shape[0])), v

    return _orthogonal_rule(lambda p: (p.shape[-1],), direction, beta, beta2)


def scale_by_adamuon(
    beta: float = 0.95, beta2: float = 0.95, eps: float = 1e-8, rms: float = ADAMUON_RMS
) -> optax.GradientTransformation:
    """AdaMuon's direction for matrices (module docstring): elementwise second moment of the
    orthogonalised momentum, then RMS alignment to `rms`."""

    def direction(o, v, b2):
        v = b2 * v + (1.0 - b2) * jnp.square(o)
        normalised = o / (jnp.sqrt(v) + eps)
        return normalised * (rms * jnp.sqrt(o.size) / (jnp.linalg.norm(normalised) + eps)), v

    return _orthogonal_rule(lambda p: as_matrix(p).shape, direction, beta, beta2)


def scale_by_ortho_adam(b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8) -> optax.GradientTransformation:
    """unit_rms(NS(m / √(v + ε))) with plain exponential averages m, v (module docstring)."""

    def init(params):
        return OrthogonalState(jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        m = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.momentum, updates)
        v = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.second, updates)
        d = jax.tree.map(
            lambda g, m, v: unit_rms(newton_schulz(as_matrix(m * jax.lax.rsqrt(v + eps)))).reshape(g.shape),
            updates,
            m,
            v,
        )
        return d, OrthogonalState(m, v)

    return optax.GradientTransformation(init, update)


def _with_adam_elsewhere(
    matrix_rule: optax.GradientTransformation,
    learning_rate: Any,
    adam_b1: float,
    adam_b2: float,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    clip: float | None = None,
    labels: Any = _matrix_labels,
) -> optax.GradientTransformation:
    """`matrix_rule` on matrices (as `labels` picks them), Adam (NAdam with `nesterov`, as optax's
    muon) elsewhere, then decoupled weight decay and −learning_rate."""
    return optax.chain(
        optax.clip(clip) if clip else optax.identity(),
        optax.multi_transform(
            {"matrix": matrix_rule, "other": optax.scale_by_adam(adam_b1, adam_b2, nesterov=nesterov)}, labels
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def normuon(
    learning_rate: Any = 0.02,
    beta: float = 0.95,
    beta2: float = 0.95,
    weight_decay: float = 0.0,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
) -> optax.GradientTransformation:
    """NorMuon on matrices, NAdam elsewhere (defaults from Li et al. 2025's reference code)."""
    return _with_adam_elsewhere(
        scale_by_normuon(beta, beta2), learning_rate, adam_b1, adam_b2, weight_decay=weight_decay
    )


def adamuon(
    learning_rate: Any = 3e-3,
    beta: float = 0.95,
    beta2: float = 0.95,
    weight_decay: float = 0.0,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
) -> optax.GradientTransformation:
    """AdaMuon on matrices (update RMS 0.2, so Adam-like learning rates), NAdam elsewhere."""
    return _with_adam_elsewhere(
        scale_by_adamuon(beta, beta2), learning_rate, adam_b1, adam_b2, weight_decay=weight_decay
    )


def ortho_adam(
    learning_rate: Any = 3e-3, b1: float = 0.9, b2: float = 0.95, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """The generalist's hand-designed start: ortho-Adam on the tensors the generalist's learned
    rule takes (matrices, not embeddings or biases), Adam (β 0.9 / 0.95, as the generalist's
    other branch) elsewhere, gradients clipped to ±1000 as there."""
    return _with_adam_elsewhere(
        scale_by_ortho_adam(b1, b2),
        learning_rate,
        b1,
        b2,
        nesterov=False,
        weight_decay=weight_decay,
        clip=GRADIENT_CLIP,
        labels=_generalist_labels,
    )


def warmup_cosine(learning_rate: Any, num_steps: int, warmup_fraction: float = 0.05) -> optax.Schedule:
    """η · (linear warm-up over `warmup_fraction` of the run, cosine decay to 0 at `num_steps`),
    the generalist's own schedule (`lopt.learned.generalist.schedule_factor`), so a scheduled
    baseline and the learned rule share it exactly."""
    return lambda count: learning_rate * schedule_factor(count, num_steps, "cosine", warmup_fraction, 0.0)

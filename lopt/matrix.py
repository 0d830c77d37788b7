"""Matrix functions written once for any array library: the code uses only operators, `.T`,
`.sum`, `.reshape` and `@`, which JAX arrays and torch tensors share, so the JAX optimizers, the
program interpreters and `lopt.torch` run the same definition.

A tensor is read as a matrix [fan_in, fan_out] (`matrix_view`): a dense kernel as it is stored in
flax ([in, out]), a conv kernel [h, w, in, out] with every axis but the last as fan-in (as Muon,
GaLore and APOLLO treat conv layers), a vector of n as one row [1, n] and a scalar as [1, 1]. The
one rule covers every rank, so a matrix function has a value on biases and norm scales too: on a
row, Adafactor's rank-1 reconstruction row_ms ⊗ col_ms / mean is exact and orthogonalisation is
the row's unit direction times Newton–Schulz's fixed-point value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
NORMALIZE_EPS = 1e-8


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a tensor of `shape` (module docstring)."""
    if len(shape) == 0:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def newton_schulz(
    x: Any,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = NS_EPS,
    cast: Callable[[Any], Any] | None = None,
    norm: Callable[[Any], Any] | None = None,
) -> Any:
    """Approximate the orthogonal factor U Vᵀ of a matrix x = U Σ Vᵀ by the quintic Newton–Schulz
    iteration X ← aX + (bA + cA²)X, A = XXᵀ, from X₀ = x / (‖x‖_F + eps) (Jordan et al. 2024,
    "Muon"; coefficients as there), on the shorter side. The singular values end in about
    [0.7, 1.2], not at 1: Muon's coefficients trade convergence for slope at zero.

    cast: applied to X₀ before the iteration (e.g. to bfloat16; the caller casts the result back).
    norm: the Frobenius norm to use (None: √Σx², in operators); a library's own (jnp.linalg.norm,
    torch.linalg.norm) keeps its rounding, so the generalist's numbers do not move by a digit."""
    a, b, c = coefficients
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    x = x / ((x * x).sum() ** 0.5 + eps if norm is None else norm(x) + eps)
    if cast is not None:
        x = cast(x)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


def row_ms(x: Any) -> Any:
    """Mean of squares along each row (over fan-out): [rows, 1]."""
    return (x * x).sum(1).reshape(x.shape[0], 1) / x.shape[1]


def col_ms(x: Any) -> Any:
    """Mean of squares down each column (over fan-in, one value per output unit): [1, cols]."""
    return (x * x).sum(0).reshape(1, x.shape[1]) / x.shape[0]


def width_scale(x: Any) -> Any:
    """x · √max(1, fan_out / fan_in): Muon's width scaling (Jordan et al. 2024; optax.contrib.muon's
    default), so orthogonalised updates keep their size per unit as layers widen."""
    return x * math.sqrt(max(1.0, x.shape[1] / x.shape[0]))


# The library's matrix functions on a [fan_in, fan_out] matrix; a result may be [rows, 1] or
# [1, cols], which the caller broadcasts back to the matrix's shape.
MATRIX_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "orthogonalize": newton_schulz,
    "row_ms": row_ms,
    "col_ms": col_ms,
    "row_normalize": lambda x: x / (row_ms(x) ** 0.5 + NORMALIZE_EPS),
    "col_normalize": lambda x: x / (col_ms(x) ** 0.5 + NORMALIZE_EPS),
    "width_scale": width_scale,
}

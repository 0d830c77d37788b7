"""Hypergradients by the implicit function theorem, at trained weights (Lorraine, Vicol &
Duvenaud 2020, "Optimizing Millions of Hyperparameters by Implicit Differentiation").

At weights w* where the training loss L_T(w, λ) is stationary in w, the implicit function
theorem gives the hypergradient of a validation loss L_V without unrolling training (their
Eq. 2-4):

    dL_V/dλ = ∂L_V/∂λ − (∂²L_T/∂λ∂w) · H⁻¹ · ∂L_V/∂w,       H = ∂²L_T/∂w²  at (w*, λ).

Only the product v = H⁻¹ ∂L_V/∂w is hard. Two solvers, each from Hessian-vector products
(forward-over-reverse, never the Hessian itself):

- "neumann": v ≈ α Σ_{j=0}^{K} (I − αH)^j ∂L_V/∂w, their Algorithm 3 (converges for
  0 < α < 2/λ_max(H) on a positive-definite H; K steps, one HVP each);
- "cg": conjugate gradients, from lineax (`pip install lopt[hpo]`), for positive-definite H.

The mixed term (∂²L_T/∂λ∂w)·v is one more reverse pass, of λ ↦ ⟨∂L_T/∂w(w*, λ), v⟩ with v held
fixed. Every solve reports its relative residual ‖Hv − b‖/‖b‖; above `tolerance` it raises one
line (`SolverError`), since a hypergradient from an unconverged solve points anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lopt.hypergrad.exact import check_finite

SOLVERS = ("neumann", "cg")


class SolverError(RuntimeError):
    """The inverse-Hessian-vector solve did not reach its tolerance."""


class Hypergradient(NamedTuple):
    """dL_V/dλ (shaped like λ), the solver's relative residual and its number of steps."""

    grad: Any
    residual: float
    steps: int


def neumann(hvp: Callable[[jax.Array], jax.Array], b: jax.Array, *, alpha: float, iterations: int) -> jax.Array:
    """α Σ_{j=0}^{K} (I − αH)^j b (Lorraine et al. 2020, Algorithm 3), K = `iterations`."""

    def body(carry, _):
        term, total = carry
        term = term - alpha * hvp(term)
        return (term, total + term), None

    (_, total), _ = jax.lax.scan(body, (b, b), None, length=iterations)
    return alpha * total


def conjugate_gradient(
    hvp: Callable[[jax.Array], jax.Array], b: jax.Array, *, rtol: float, iterations: int
) -> tuple[jax.Array, int]:
    """H⁻¹ b by lineax's conjugate gradients (H positive definite); returns (v, steps)."""
    try:
        import lineax as lx
    except ImportError:
        raise ImportError("the 'cg' solver uses lineax: pip install 'lopt[hpo]' (or use solver='neumann')") from None
    operator = lx.FunctionLinearOperator(hvp, jax.ShapeDtypeStruct(b.shape, b.dtype), lx.positive_semidefinite_tag)
    solution = lx.linear_solve(operator, b, lx.CG(rtol=rtol, atol=0.0, max_steps=iterations), throw=False)
    return solution.value, int(solution.stats["num_steps"])


def hypergradient(
    train_loss: Callable[[Any, Any], jax.Array],
    val_loss: Callable[[Any, Any], jax.Array],
    weights: Any,
    hyper: Any,
    *,
    solver: str = "cg",
    iterations: int = 100,
    alpha: float = 0.1,
    rtol: float = 1e-6,
    tolerance: float | None = 1e-2,
) -> Hypergradient:
    """dL_V/dλ at `weights` (trained to a stationary point of train_loss(·, hyper)) by the
    implicit function theorem. train_loss(w, λ) and val_loss(w, λ) -> scalars; w and λ are
    pytrees. solver: 'cg' (rtol, at most `iterations` steps) or 'neumann' (`iterations` terms,
    step `alpha`). Raises SolverError when the solve's relative residual exceeds `tolerance`
    (None: no check, for Lorraine et al.'s deliberately truncated series during training, where
    the weights are not at a minimum yet), and FloatingPointError on a non-finite hypergradient."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    flat_w, unravel = ravel_pytree(weights)

    def grad_train(w_flat, h):
        return ravel_pytree(jax.grad(train_loss)(unravel(w_flat), h))[0]

    def hvp(v):
        return jax.jvp(lambda w: grad_train(w, hyper), (flat_w,), (v,))[1]

    val_w, val_h = jax.grad(val_loss, argnums=(0, 1))(weights, hyper)
    b = ravel_pytree(val_w)[0]
    if solver == "neumann":
        v, steps = neumann(hvp, b, alpha=alpha, iterations=iterations), iterations
    else:
        v, steps = conjugate_gradient(hvp, b, rtol=rtol, iterations=iterations)
    residual = float(jnp.linalg.norm(hvp(v) - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))
    if tolerance is not None and not residual <= tolerance:
        raise SolverError(
            f"the {solver} solve of H v = dL_V/dw did not converge: relative residual {residual:.3g} after "
            f"{steps} steps (tolerance {tolerance:g}); train closer to a minimum, or use more iterations"
            + (" or a smaller alpha" if solver == "neumann" else "")
        )
    v = jax.lax.stop_gradient(v)
    mixed = jax.grad(lambda h: jnp.vdot(grad_train(flat_w, h), v))(hyper)
    grad = jax.tree.map(lambda a, m: a - m, val_h, mixed)
    check_finite(grad, "implicit hypergradient")
    return Hypergradient(grad, residual, steps)

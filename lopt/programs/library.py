"""The function library of optimizer programs (Chen et al. 2023, "Symbolic Discovery of
Optimization Algorithms", appendix: 45 functions over tensors, pytrees and scalars).

Values are either tensors (shaped like the parameters: a pytree) or scalars. Elementwise
functions broadcast a scalar argument against a tensor one and return a tensor if any argument
is one. Following the paper, log and sqrt act on |x|. Tree-level functions reduce over the
whole parameter pytree (global_norm, dot, cosine_sim return scalars; clip_by_global_norm keeps
its argument's type); `norm` is the per-tensor L2 norm, broadcast over each tensor.

Beyond the paper, matrix functions (`MATRIX_NAMES`, `lopt.matrix`) read each tensor as a
[fan_in, fan_out] matrix (vectors as one row, scalars as 1×1) and return a tensor of its shape:
`orthogonalize` (Muon's Newton–Schulz), `row_ms` / `col_ms` (mean of squares per row / per output
unit, broadcast: Adafactor's factored statistics), `row_normalize` / `col_normalize` (x over the
root of those, + 1e-8) and `width_scale` (x·√max(1, fan_out/fan_in), Muon's width scaling). They
put Muon, NorMuon, AdaMuon and Adafactor-like factored states in the space. `SPACES` names the
function sets a search draws from: "lion" is the paper's, "matrix" adds these.

Not copied from google/automl `hero/fn_lib.py`, whose cbrt returns the function, whose
"invert" is bitwise and whose interpolate annotation disagrees with its signature; here
interp(x, y, a) = (1 − a)·x + a·y, the order the paper's programs use (m = interp(g, m, 0.9) is
m ← 0.1·g + 0.9·m).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from lopt.matrix import MATRIX_FUNCTIONS, matrix_view

TENSOR, SCALAR = "T", "S"


@dataclasses.dataclass(frozen=True)
class Function:
    """name; arity; kind: 'elementwise' (fn on arrays, broadcasting), 'reduce' (→ scalar),
    'clip_global' or 'tensor_norm' (tree-level, special-cased by the interpreters), 'matrix' (fn on
    one tensor's [fan_in, fan_out] view, `lopt.matrix`);
    commutative: argument order does not matter (for the structural hash); infix: operator text."""

    name: str
    arity: int
    kind: str
    fn: Callable | None = None
    commutative: bool = False
    infix: str | None = None


def _interp(x, y, a):
    return (1.0 - a) * x + a * y


def _clip(x, c):
    c = jnp.abs(c)
    return jnp.clip(x, -c, c)


_UNARY: dict[str, Callable] = {
    "abs": jnp.abs,
    "cos": jnp.cos,
    "sin": jnp.sin,
    "tan": jnp.tan,
    "arcsin": jnp.arcsin,
    "arccos": jnp.arccos,
    "arctan": jnp.arctan,
    "sinh": jnp.sinh,
    "cosh": jnp.cosh,
    "tanh": jnp.tanh,
    "arcsinh": jnp.arcsinh,
    "arccosh": jnp.arccosh,
    "arctanh": jnp.arctanh,
    "exp": jnp.exp,
    "exp2": jnp.exp2,
    "exp10": lambda x: jnp.power(10.0, x),
    "expm1": jnp.expm1,
    "log": lambda x: jnp.log(jnp.abs(x)),
    "log10": lambda x: jnp.log10(jnp.abs(x)),
    "log2": lambda x: jnp.log2(jnp.abs(x)),
    "log1p": jnp.log1p,
    "square": jnp.square,
    "sqrt": lambda x: jnp.sqrt(jnp.abs(x)),
    "cube": lambda x: x * x * x,
    "cbrt": jnp.cbrt,
    "sign": jnp.sign,
    "reciprocal": lambda x: 1.0 / x,
    "negative": jnp.negative,
}

FUNCTIONS: dict[str, Function] = {name: Function(name, 1, "elementwise", fn) for name, fn in _UNARY.items()}
FUNCTIONS.update(
    {
        "add": Function("add", 2, "elementwise", jnp.add, commutative=True, infix="+"),
        "sub": Function("sub", 2, "elementwise", jnp.subtract, infix="-"),
        "mul": Function("mul", 2, "elementwise", jnp.multiply, commutative=True, infix="*"),
        "div": Function("div", 2, "elementwise", jnp.divide, infix="/"),
        "max": Function("max", 2, "elementwise", jnp.maximum, commutative=True),
        "min": Function("min", 2, "elementwise", jnp.minimum, commutative=True),
        "power": Function("power", 2, "elementwise", jnp.power),
        "interp": Function("interp", 3, "elementwise", _interp),
        "clip": Function("clip", 2, "elementwise", _clip),
        "norm": Function("norm", 1, "tensor_norm"),
        "global_norm": Function("global_norm", 1, "reduce"),
        "dot": Function("dot", 2, "reduce", commutative=True),
        "cosine_sim": Function("cosine_sim", 2, "reduce", commutative=True),
        "clip_by_global_norm": Function("clip_by_global_norm", 2, "clip_global"),
    }
)
MATRIX_NAMES = tuple(MATRIX_FUNCTIONS)
FUNCTIONS.update({name: Function(name, 1, "matrix", fn) for name, fn in MATRIX_FUNCTIONS.items()})
SPACES: dict[str, tuple[str, ...]] = {
    "lion": tuple(name for name in FUNCTIONS if name not in MATRIX_NAMES),
    "matrix": tuple(FUNCTIONS),
}

INFIX = {f.infix: f.name for f in FUNCTIONS.values() if f.infix}
NAMES = tuple(FUNCTIONS)
CONSTANTS = {"pi": float(np.pi), "e": float(np.e), "eps": 1e-8}


def result_type(name: str, arg_types: tuple[str, ...]) -> str:
    """The type (TENSOR or SCALAR) of `name` applied to arguments of `arg_types`."""
    function = FUNCTIONS[name]
    if function.kind == "reduce":
        return SCALAR
    if function.kind == "clip_global":
        return arg_types[0]
    return TENSOR if TENSOR in arg_types else SCALAR


def apply_matrix(name: str, x, broadcast=jnp.broadcast_to):
    """Matrix function `name` on a tensor or scalar `x` of any rank, through its matrix view and
    back to x's shape (`broadcast(y, shape)` widens a per-row or per-column result)."""
    rows, cols = matrix_view(tuple(x.shape))
    y = FUNCTIONS[name].fn(x.reshape(rows, cols))
    return broadcast(y, (rows, cols)).reshape(x.shape)

"""The costly slot groups of the batched interpreter (`lopt.programs.batched`) computed from a few
shared calls whose arguments the slot's function picks: exp/log, inverse and trigonometric
functions to float32 accuracy at a fraction of the cost of calling each library function
(tests/test_programs.py checks each against the library on 1e-6..1e30, ±0, ±inf and NaN)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_LN2, _LN10 = float(np.log(2.0)), float(np.log(10.0))
_LARGE = 1e10  # beyond it x² + 1 = x² in float32 and x² overflows past 1e19: arcsinh/arccosh switch to log(2x)


def _arctan(x: jax.Array) -> jax.Array:
    """arctan in float32 from one division and a degree-9 odd polynomial (the Cephes atanf
    reduction and coefficients, S. Moshier: |x| > tan(3π/8) → π/2 − atan(1/|x|), |x| >
    tan(π/8) → π/4 + atan((|x| − 1)/(|x| + 1)); relative error ~1e-7). XLA's arctan costs ~10
    copies of the vector on the CPU; this about two."""
    a = jnp.abs(x)
    big, mid = a > 2.414213562373095, a > 0.4142135623730950
    y = jnp.where(big, -1.0 / jnp.where(big, a, 1.0), jnp.where(mid, (a - 1.0) / (a + 1.0), a))
    base = jnp.where(big, np.float32(np.pi / 2), jnp.where(mid, np.float32(np.pi / 4), 0.0))
    z = y * y
    poly = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * y + y
    return jnp.sign(x) * (base + poly)


def _pick(op: jax.Array, choices: list) -> jax.Array:
    """choices[op] (op is the slot's function number, the same for every element; past the end:
    the last choice)."""
    return jax.lax.select_n(jnp.clip(op, 0, len(choices) - 1), *jnp.broadcast_arrays(*choices))


def _log1p_from_log(x: jax.Array, arg: jax.Array, log_arg: jax.Array) -> jax.Array:
    """log1p(x) from log(arg) with arg = 1 + x rounded (Goldberg 1991, "What every computer
    scientist should know about floating-point arithmetic", Theorem 4: x·log(1 + x)/((1 + x) − 1)
    is accurate where log(1 + x) alone loses x's low digits)."""
    return jnp.where(arg == 1.0, x, jnp.where(x == jnp.inf, jnp.inf, log_arg * x / (arg - 1.0)))


def explog_results(a: jax.Array, op: jax.Array) -> list[jax.Array]:
    """exp, exp2, exp10, expm1, log, log2, log10, log1p, tanh, cosh, sinh from one exp, one expm1
    and one log whose arguments the slot's function picks (eleven transcendental calls cost
    ~8 copies of the vector on the CPU; these three about two): exp2 a = exp(a ln 2), exp10 a =
    exp(a ln 10), cosh a = (e + 1/e)/2 with e = exp|a|, sinh a = sgn(a)·(M + M/(M + 1))/2 with
    M = expm1|a| (e/2 past |a| = 20), tanh a = sgn(a)·M/(M + 2) with M = expm1(2|a|) (±1 past
    |a| = 10), log_b|a| = log|a|/log b, log1p from log(1 + a) (`_log1p_from_log`)."""
    abs_a = jnp.abs(a)
    e = jnp.exp(_pick(op, [a, a * _LN2, a * _LN10, a, a, a, a, a, a, abs_a, abs_a]))
    big_m = jnp.expm1(_pick(op, [a, a, a, a, a, a, a, a, 2.0 * abs_a, abs_a, abs_a]))
    arg = _pick(op, [abs_a, abs_a, abs_a, abs_a, abs_a, abs_a, abs_a, 1.0 + a, abs_a])
    log = jnp.log(arg)
    sign = jnp.sign(a)
    tanh = sign * jnp.where(abs_a > 10.0, 1.0, big_m / (big_m + 2.0))
    sinh = sign * jnp.where(abs_a > 20.0, 0.5 * e, 0.5 * (big_m + big_m / (big_m + 1.0)))
    return [
        e,
        e,
        e,
        big_m,
        log,
        log * np.float32(1 / _LN2),
        log * np.float32(1 / _LN10),
        _log1p_from_log(a, arg, log),
        tanh,
        0.5 * (e + 1.0 / e),
        sinh,
    ]


def inverse_results(a: jax.Array, b: jax.Array, op: jax.Array) -> list[jax.Array]:
    """arcsinh, arccosh, arctanh, cbrt, power from one log and one exp whose arguments the slot's
    function picks (the library's jnp functions cost 13 (cbrt) and 11 (power) copies of the
    vector each on the CPU): arcsinh a = sgn(a) log1p(|a| + a²/(1 + √(1 + a²))), arccosh a =
    log1p(u + √(u(a + 1))) with u = a − 1, arctanh a = ½ log1p(2a/(1 − a)) (log1p from log,
    `_log1p_from_log`; log 2|a| past |a| = 1e10, where a² overflows), |a|^y = exp(y log|a|)
    with jnp.power's signs, zeros and NaNs for a < 0 (y = b, or ⅓ for cbrt with a's sign)."""
    abs_a = jnp.abs(a)
    square = a * a
    u = a - 1.0
    x = _pick(
        op,
        [
            jnp.where(abs_a > _LARGE, 2.0 * abs_a, abs_a + square / (1.0 + jnp.sqrt(1.0 + square))),
            jnp.where(a > _LARGE, 2.0 * a, u + jnp.sqrt(u * (a + 1.0))),
            2.0 * a / (1.0 - a),
            abs_a,
        ],
    )
    arg = _pick(op, [1.0 + x, 1.0 + x, 1.0 + x, abs_a])
    log = jnp.log(arg)
    log1p = _log1p_from_log(x, arg, log)
    magnitude = jnp.exp(_pick(op, [log, log, log, log * np.float32(1.0 / 3.0), b * log]))
    integral = b == jnp.round(b)
    odd = integral & (jnp.abs(jnp.fmod(b, 2.0)) == 1.0)
    power = jnp.where(a < 0, jnp.where(integral, jnp.where(odd, -magnitude, magnitude), jnp.nan), magnitude)
    return [
        jnp.sign(a) * log1p,
        jnp.where(a >= 1.0, log1p, jnp.nan),
        0.5 * log1p,
        jnp.sign(a) * magnitude,
        jnp.where(b == 0, 1.0, power),
    ]


def trig_results(a: jax.Array, op: jax.Array) -> list[jax.Array]:
    """sin, cos, tan (= sin/cos), arcsin, arccos, arctan from one sin, one cos and one arctan
    whose argument the slot's function picks: arcsin a = atan(a/√(1 − a²)), arccos a =
    2 atan(√((1 − a)/(1 + a))) (NaN outside [−1, 1], as numpy's)."""
    sin, cos = jnp.sin(a), jnp.cos(a)
    one_minus, one_plus = 1.0 - a, 1.0 + a
    inside = jnp.abs(a) <= 1.0
    atan = _arctan(_pick(op, [a, a, a, a / jnp.sqrt(one_minus * one_plus), jnp.sqrt(one_minus / one_plus), a]))
    return [sin, cos, sin / cos, jnp.where(inside, atan, jnp.nan), jnp.where(inside, 2.0 * atan, jnp.nan), atan]

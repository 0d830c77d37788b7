"""Functional hashing (Gillard et al. 2023, "Unified Functional Hashing"; AutoML-Zero's and
NOSBench's equivalence caches): run each program a few steps on fixed probe problems and hash
its rounded updates, so algebraically equal programs (m/sqrt(m·m) and sign(m)) collide even
when their structure differs. The same probe rejects programs that produce non-finite updates
before any training (early rejection).

Probes: two noisy quadratics with per-coordinate curvature, two tensors each, one a matrix (so
per-tensor `norm` differs from `global_norm` and row statistics from column ones), 8 steps, lr input
0.1; values are rounded to 4 significant digits before hashing. The first probe starts the states
at zero, as in use; the second starts them at random values, because a slow EMA started at zero is
invisible for the first few steps (the raw Lion program's 0.997-EMA would otherwise hash like plain
sign(g)). Programs equal for every state value collide under both. The hash covers the update and
both next states (as an unordered pair, so swapping the roles of m and v does not matter): two
programs whose updates agree only because a sign() hides how their momenta differ do not collide.

`ZERO_PROBE`, part of the hash and of the finiteness check, gives some coordinates an exactly
zero gradient from zero states (where `m / (sqrt(v) + 1e-8)` gives 0 and `m / sqrt(v)` NaN), as
dead units and unused embedding rows do in real networks. `EXTREME_PROBES` add two more for the
simplifier, whose rewrites must hold everywhere: tiny (1e-7) and huge (1e8) gradients and states.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from lopt.programs.analysis import Graph
from lopt.programs.batched import encode_population, run_encoded, tensor_sizes

PROBE_STEPS = 8
PROBE_BATCH = 32  # programs per probe call: one shape per power-of-two number of rounds
PROBE_LR = 0.1
SIGNIFICANT = 4


@functools.cache
def _probe(seed: int, shapes: tuple, random_state: bool, kind: str = "normal"):
    """kind: 'normal'; 'zero' (the first coordinate of each tensor gets gradient 0 throughout,
    from zero states); 'tiny' / 'huge' (weights, noise and states scaled by 1e-7 / 1e8: their
    squares and fourth powers stay inside float32, so the probe's own underflow is no difference)."""
    rng = np.random.default_rng(seed)
    sizes = tensor_sizes(shapes)
    size = sum(sizes)
    curvature = rng.uniform(0.1, 2.0, size).astype(np.float32)
    scale = {"normal": 1.0, "zero": 1.0, "tiny": 1e-7, "huge": 1e8}[kind]
    w0 = rng.normal(size=size).astype(np.float32) * scale
    noise = rng.normal(size=(PROBE_STEPS, size)).astype(np.float32) * scale
    states = rng.normal(size=(2, size)).astype(np.float32) * float(random_state) * scale
    if kind == "zero":
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        w0[first], noise[:, first], states[:, first] = 0.0, 0.0, 0.0
    return (*jax.device_put((w0, curvature, noise, states), _host()), tuple(shapes))


@functools.cache
def _host() -> jax.Device:
    """Where probes run: the CPU, also beside a GPU. The probes are tiny, and a search with
    `search.overlap` probes the next generation while the GPU trains this one; on the GPU they
    would wait in its queue behind that training."""
    return jax.devices("cpu")[0]


# Tensor shapes (an int: a vector): each probe holds a matrix, so matrix functions see rows and
# columns that differ; elementwise and tree-level functions see only the flat sizes.
PROBES = ((0, ((2, 3), 3), False), (1, ((2, 2), 5), True))
# Coordinates whose gradient is exactly zero from the start: dead ReLU units, input pixels that
# are always 0, embedding rows of tokens never seen. `m / sqrt(v)` is NaN there while
# `m / (sqrt(v) + 1e-8)` is 0, and on the normal probes the two round to the same values.
ZERO_PROBE = (2, (5, (2, 2)), False, "zero")
EXTREME_PROBES = PROBES + (ZERO_PROBE, (3, ((2, 2), 5), True, "tiny"), (4, (3, (3, 2)), True, "huge"))


@functools.partial(jax.jit, static_argnums=(5,))
def _run_probe(programs, w0, curvature, noise, states, shapes):
    def one(program):
        def step(carry, inputs):
            w, m, v = carry
            t, eps = inputs
            g = curvature * w + eps
            update, m, v = run_encoded(program, w, g, m, v, PROBE_LR, t, shapes)
            return (w - update, m, v), jnp.stack([update, m, v])

        _, updates = jax.lax.scan(
            step, (w0, states[0], states[1]), (jnp.arange(1, PROBE_STEPS + 1, dtype=jnp.float32), noise)
        )
        return updates

    return jax.vmap(one)(programs)


def _round(values: np.ndarray) -> np.ndarray:
    """`values` to SIGNIFICANT significant digits (float64; non-finite as NaN), as formatting
    and parsing the decimal would give. Where 10^places is exact (|places| ≤ 22) the decimal is
    the integer ±dddd over or times it, one correctly rounded division or product, so the result
    is the double nearest the decimal with no Python call per value (the per-value formatting took
    half of a generation's probe time); the rare values outside are formatted one by one."""
    x = np.asarray(values, np.float64)
    with np.errstate(all="ignore"):
        finite = np.isfinite(x)
        safe = np.where(finite & (x != 0), np.abs(x), 1.0)
        places = SIGNIFICANT - 1 - np.floor(np.log10(safe))
        exact = np.abs(places) <= 22
        up, down = 10.0 ** np.where(exact, np.maximum(places, 0), 0), 10.0 ** np.where(exact, np.maximum(-places, 0), 0)
        out = np.where(places >= 0, np.round(x * up) / up, np.round(x / down) * down)
    out = np.where(finite, out, np.nan)
    for i in np.flatnonzero(finite & ~exact):
        out.flat[i] = float(f"{x.flat[i]:.{SIGNIFICANT - 1}e}")
    return out


def probe_values(graphs: list[Graph], probes: tuple = PROBES) -> list[list[np.ndarray]]:
    """Per pruned graph, its [update, m, v] over every step of `probes`, rounded to
    SIGNIFICANT digits (non-finite values as NaN)."""
    values = []
    for start in range(0, len(graphs), PROBE_BATCH):
        chunk = graphs[start : start + PROBE_BATCH]
        batch = jax.device_put(encode_population(chunk, PROBE_BATCH, round_up=True), _host())
        outputs = [np.asarray(_run_probe(batch, *_probe(*probe)))[: len(chunk)] for probe in probes]
        values += [
            [_round(np.concatenate([o[i][:, k].ravel() for o in outputs])) for k in range(3)] for i in range(len(chunk))
        ]
    return values


def probe_report(graphs: list[Graph]) -> list[tuple[str, bool, bool]]:
    """(hash, finite, finite where gradients vanish) per pruned graph: the hash of its updates and
    states on `PROBES` and `ZERO_PROBE`, whether every update on `PROBES` was finite, and whether
    every update on `ZERO_PROBE` was. Without the zero probe in the hash a search cached
    `m / sqrt(v)` as `m / (sqrt(v) + ε)` and its funnel promoted it (GPU search, 2026-12-02);
    exported, it turned a digits MLP's weights to NaN at its first step (a dead ReLU unit)."""
    normal = PROBE_STEPS * sum(sum(tensor_sizes(probe[1])) for probe in PROBES)  # the updates on PROBES come first
    return [
        (_digest(parts), bool(np.all(np.isfinite(parts[0][:normal]))), bool(np.all(np.isfinite(parts[0][normal:]))))
        for parts in probe_values(graphs, PROBES + (ZERO_PROBE,))
    ]


def _digest(parts: list[np.ndarray]) -> str:
    """The hash of a program's probe [update, m, v] (the states as an unordered pair)."""
    digests = [hashlib.sha256((p.astype(np.float64) + 0.0).tobytes()).hexdigest() for p in parts]
    return hashlib.sha256("".join([digests[0], *sorted(digests[1:])]).encode()).hexdigest()[:24]


def functional_hashes(graphs: list[Graph], probes: tuple = PROBES + (ZERO_PROBE,)) -> list[tuple[str, bool]]:
    """(hash, finite) per pruned graph: the hash of its probe updates and states, and whether
    every probe update was finite, on `probes` (the simplifier, which may turn the original's NaN
    into a number, compares on `PROBES` and checks the extremes apart)."""
    return [(_digest(parts), bool(np.all(np.isfinite(parts[0])))) for parts in probe_values(graphs, probes)]

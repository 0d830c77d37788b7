"""Features shared by the learned optimizers: accumulators, per-parameter inputs, and scalar
(training-progress and loss) inputs.

Per-parameter accumulators (one set per parameter tensor, configured by decay tuples):
- momentum m_k ← β_k m_k + (1 − β_k) g at each momentum decay (small_fc_lopt / AdafacMLPLOpt:
  Metz et al. 2022, "Practical tradeoffs between memory, compute, and performance in learned
  optimizers"; VeLO uses β = 0.9, 0.99, 0.999);
- second moment v_r ← β_r v_r + (1 − β_r) g² at each rms decay (Adam's accumulator);
- Adafactor factored second moments (Shazeer & Stern 2018) for tensors of rank ≥ 2: row and
  column means of g² + 1e-30 over the last two axes, R ← β R + (1 − β) mean_col(g²),
  C ← β C + (1 − β) mean_row(g²), and v̂ = R Cᵀ / mean(R); tensors of rank < 2 keep the full
  accumulator instead, as Adafactor does. Every rsqrt adds 1e-12 first, so meta-gradients stay
  finite where a gradient is exactly zero.

Per-parameter features, in order (each divided by its root-mean-square over the tensor, as
small_fc_lopt and VeLO do, so the learned network sees scale-free inputs):
  g, clip(g, ±0.1), p, m_k (each momentum), g·rsqrt(v_r) (each rms), m_k·rsqrt(v_0) (each
  momentum, with the first rms), rsqrt(v_0), g·rsqrt(v̂_f) (each factored), m_0·rsqrt(v̂_f)
  (each factored, with the first momentum).

Scalar features (the same for every parameter; folded into the first layer's bias, so they
cost nothing per parameter):
- training progress: tanh(t/τ − 1) at 11 timescales τ = 1, 3, 10, ..., 1e5 (learned_optimization's
  time embedding) plus tanh(s·t/T) of the fraction of `num_steps` done at s = 1, 3, 10, 30;
- loss (VeLO-style, optional): EMAs of the loss at 3 decays, log1p of their excess over the
  running minimum relative to |minimum|, and tanh of the current loss's deviation from each EMA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lopt.learned import dispatch, kernels_2d

TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
PROGRESS_SCALES = (1.0, 3.0, 10.0, 30.0)
LOSS_DECAYS = (0.9, 0.99, 0.999)
CLIP_GRADIENT = 0.1
NORMALISER_EPS = 1e-18
RSQRT_EPS = 1e-12
FACTORED_EPS = 1e-30


@dataclasses.dataclass(frozen=True)
class AccumulatorConfig:
    """Which accumulators a learned optimizer keeps (initial decays; learned ones move)."""

    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    factored_decays: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("momentum_decays", "rms_decays", "factored_decays"):
            for decay in getattr(self, name):
                if not 0.0 < decay < 1.0:
                    raise ValueError(f"{name} must lie in (0, 1), got {decay}")
        if not self.momentum_decays:
            raise ValueError("at least one momentum decay is needed")

    @property
    def num_features(self) -> int:
        """Number of per-parameter features (see the module docstring for their order)."""
        return len(self.feature_names())

    def feature_names(self) -> tuple[str, ...]:
        m, r, f = self.momentum_decays, self.rms_decays, self.factored_decays
        names = ["g", "clip_g", "p", *[f"m{d}" for d in m], *[f"g_rsqrt_v{d}" for d in r]]
        if r:
            names += [f"m{d}_rsqrt_v{r[0]}" for d in m] + [f"rsqrt_v{r[0]}"]
        names += [f"g_rsqrt_vhat{d}" for d in f] + [f"m{m[0]}_rsqrt_vhat{d}" for d in f]
        return tuple(names)


class Decays(NamedTuple):
    """Current decay values (arrays, possibly meta-learned), one vector per accumulator kind."""

    momentum: jax.Array
    rms: jax.Array
    factored: jax.Array


class FactoredMoment(NamedTuple):
    """Adafactor statistics of one tensor: row and column accumulators (rank ≥ 2), or the full
    accumulator in `row` and an empty `col` (rank < 2)."""

    row: jax.Array
    col: jax.Array


class ParamAccumulators(NamedTuple):
    """All accumulators of one parameter tensor."""

    momentum: tuple[jax.Array, ...]
    rms: tuple[jax.Array, ...]
    factored: tuple[FactoredMoment, ...]


def initial_decays(config: AccumulatorConfig) -> Decays:
    as_array = lambda values: jnp.asarray(values, jnp.float32).reshape(len(values))
    return Decays(as_array(config.momentum_decays), as_array(config.rms_decays), as_array(config.factored_decays))


def _factored_init(p: jax.Array) -> FactoredMoment:
    if p.ndim >= 2:
        return FactoredMoment(jnp.zeros(p.shape[:-1], jnp.float32), jnp.zeros(p.shape[:-2] + p.shape[-1:], jnp.float32))
    return FactoredMoment(jnp.zeros(p.shape, jnp.float32), jnp.zeros((0,), jnp.float32))


def init_accumulators(p: jax.Array, config: AccumulatorConfig) -> ParamAccumulators:
    """Zero accumulators for parameter tensor `p` (always float32)."""
    zeros = lambda: jnp.zeros(p.shape, jnp.float32)
    return ParamAccumulators(
        momentum=tuple(zeros() for _ in config.momentum_decays),
        rms=tuple(zeros() for _ in config.rms_decays),
        factored=tuple(_factored_init(p) for _ in config.factored_decays),
    )


def init_stacked_accumulators(
    params: list[jax.Array], indices: list[int], config: AccumulatorConfig
) -> ParamAccumulators:
    """Zero accumulators for the same-shaped tensors `params[i]`, i in `indices`, stacked on a
    leading axis (a group of `lopt.learned.base.tensor_groups`)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[init_accumulators(params[i], config) for i in indices])


def _ema(old: jax.Array, new: jax.Array, decay: jax.Array) -> jax.Array:
    return decay * old + (1.0 - decay) * new


def update_accumulators(acc: ParamAccumulators, g: jax.Array, decays: Decays) -> ParamAccumulators:
    """One step of every accumulator of one tensor with gradient `g` (float32)."""
    g2 = jnp.square(g)
    factored = []
    for i, moment in enumerate(acc.factored):
        if g.ndim >= 2:
            g2e = g2 + FACTORED_EPS
            factored.append(
                FactoredMoment(
                    _ema(moment.row, g2e.mean(axis=-1), decays.factored[i]),
                    _ema(moment.col, g2e.mean(axis=-2), decays.factored[i]),
                )
            )
        else:
            factored.append(FactoredMoment(_ema(moment.row, g2 + FACTORED_EPS, decays.factored[i]), moment.col))
    return ParamAccumulators(
        momentum=tuple(_ema(m, g, decays.momentum[i]) for i, m in enumerate(acc.momentum)),
        rms=tuple(_ema(v, g2, decays.rms[i]) for i, v in enumerate(acc.rms)),
        factored=tuple(factored),
    )


def factored_factors(moment: FactoredMoment) -> tuple[jax.Array, jax.Array]:
    """Adafactor's rsqrt(v̂) of a rank ≥ 2 tensor as (row factor [..., R], column factor [..., C]):
    v̂ = R Cᵀ / mean(R), so rsqrt(v̂) = rsqrt(R / mean(R)) · rsqrt(C)."""
    row_factor = jax.lax.rsqrt(moment.row / moment.row.mean(axis=-1, keepdims=True) + RSQRT_EPS)
    return row_factor, jax.lax.rsqrt(moment.col + RSQRT_EPS)


def factored_rsqrt(moment: FactoredMoment, ndim: int) -> jax.Array:
    """rsqrt of Adafactor's second-moment estimate v̂ = R Cᵀ / mean(R), broadcast to the tensor."""
    if ndim >= 2:
        row_factor, col_factor = factored_factors(moment)
        return row_factor[..., :, None] * col_factor[..., None, :]
    return jax.lax.rsqrt(moment.row + RSQRT_EPS)


PARAMETER_FEATURE = 2  # index of p among the raw features
FIRST_MOMENTUM_FEATURE = 3  # index of m_0; the other momenta follow


def raw_features(
    g: jax.Array, p: jax.Array, acc: ParamAccumulators, preconditioners: list[jax.Array] | None = None
) -> list[jax.Array]:
    """Per-parameter features of one tensor, before per-tensor normalisation (module docstring).

    preconditioners: the factored rsqrt(v̂) of each factored accumulator, when the caller has
    them in another form (a kernel's row × column blocks); by default from `acc.factored`."""
    features = [g, jnp.clip(g, -CLIP_GRADIENT, CLIP_GRADIENT), p, *acc.momentum]
    rsqrt_v = [jax.lax.rsqrt(v + RSQRT_EPS) for v in acc.rms]
    features += [g * r for r in rsqrt_v]
    if rsqrt_v:
        features += [m * rsqrt_v[0] for m in acc.momentum] + [rsqrt_v[0]]
    if preconditioners is None:
        preconditioners = [factored_rsqrt(moment, g.ndim) for moment in acc.factored]
    features += [g * f for f in preconditioners]
    features += [acc.momentum[0] * f for f in preconditioners]
    return features


@jax.custom_jvp
def tensor_means(arrays: tuple[jax.Array, ...]) -> jax.Array:
    """[K] mean of each of K same-shaped arrays.

    One variadic XLA reduction reads every input once with the arrays' elementwise producers
    fused into it: on CPUs (faster than K separate means; docs/benchmarks.md), and on GPUs for
    tensors under dispatch.KERNEL_MIN_SIZE elements, where one
    kernel instead of K matters more than its speed (a GPT-2 has ~100 bias and norm vectors).
    For large tensors on GPUs XLA's variadic reduction is slow (8× adam for 11 means at 124M
    parameters), so there K ordinary means are left to XLA."""
    arrays = tuple(jnp.asarray(x, jnp.float32) for x in arrays)
    if not dispatch.variadic_reduction(arrays[0]):
        return jnp.stack([jnp.mean(x) for x in arrays])
    dims = tuple(range(arrays[0].ndim))
    zeros = tuple(jnp.zeros((), jnp.float32) for _ in arrays)
    sums = jax.lax.reduce(arrays, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), dims)
    return jnp.stack(sums) / max(arrays[0].size, 1)


@tensor_means.defjvp
def _tensor_means_jvp(primals, tangents):
    (arrays,), (dots,) = primals, tangents
    return tensor_means(arrays), jnp.stack([jnp.mean(d.astype(jnp.float32)) for d in dots])


def feature_means(
    g: jax.Array,
    p: jax.Array,
    acc: ParamAccumulators,
    values: Callable[..., list[jax.Array]],
    num_values: int,
    *,
    kernel: bool | None = None,
    interpret: bool = False,
) -> jax.Array:
    """[K] means over one tensor of `values(g, p, acc, preconditioners)` (K arrays).

    kernel: use the one-pass Pallas kernel `kernels_2d.means_2d` (matrices of at least
    dispatch.KERNEL_MIN_SIZE elements); None chooses it on GPUs. Otherwise `tensor_means`."""
    if kernel is None:
        kernel = dispatch.matrix_kernel("auto", g) == "pallas"
    if not kernel:
        return tensor_means(tuple(values(g, p, acc, None)))
    if g.ndim != 2:
        raise ValueError(f"the statistics kernel takes matrices, got a tensor of shape {g.shape}")
    num_m = len(acc.momentum)

    def blocks(full, rows, cols):
        return values(*from_kernel_blocks(full, num_m), [r * c for r, c in zip(rows, cols)])

    return kernels_2d.means_2d(blocks, *kernel_operands(g, p, acc), num_values=num_values, interpret=interpret)


def normalised_features(
    g: jax.Array, p: jax.Array, acc: ParamAccumulators, *, kernel: bool | None = None, interpret: bool = False
) -> list[jax.Array]:
    """`raw_features` of one tensor, each divided by its root-mean-square over the tensor (the
    normalised inputs of small_fc_lopt, VeLO and Celo2); `kernel`, `interpret` as in `feature_means`."""
    raw = raw_features(g, p, acc)
    squares = lambda g, p, acc, pre: [jnp.square(f) for f in raw_features(g, p, acc, pre)]
    means = feature_means(g, p, acc, squares, len(raw), kernel=kernel, interpret=interpret)
    inverse_rms = jax.lax.rsqrt(means + NORMALISER_EPS)
    return [f * inverse_rms[k] for k, f in enumerate(raw)]


def kernel_operands(
    g: jax.Array, p: jax.Array, acc: ParamAccumulators
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One tensor's arrays as the kernels take them: full-size [g, p, momenta..., rms...], and
    the row and column factors of each factored accumulator (`factored_factors`)."""
    factors = [factored_factors(moment) for moment in acc.factored]
    return [g, p, *acc.momentum, *acc.rms], [r for r, _ in factors], [c for _, c in factors]


def from_kernel_blocks(full: list[jax.Array], num_momentum: int) -> tuple[jax.Array, jax.Array, ParamAccumulators]:
    """Inverse of `kernel_operands`' full-size list: (g, p, accumulators without the factored
    ones, whose preconditioners the kernels form from row × column blocks)."""
    g, p, *state = full
    return g, p, ParamAccumulators(tuple(state[:num_momentum]), tuple(state[num_momentum:]), ())


def time_features(step: jax.Array, num_steps: int | jax.Array) -> jax.Array:
    """[15] training-progress features: tanh(t/τ − 1) at 11 timescales, tanh(s·t/T) at 4 scales.

    `num_steps` may be a traced value (meta-training samples a horizon per inner run)."""
    t = step.astype(jnp.float32)
    fraction = t / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    # one vector op each, not 15 scalar ones (on CPUs each op is a kernel launch of its own)
    absolute = jnp.tanh(t / jnp.asarray(TIME_SCALES, jnp.float32) - 1.0)
    relative = jnp.tanh(jnp.asarray(PROGRESS_SCALES, jnp.float32) * fraction)
    return jnp.concatenate([absolute, relative])


NUM_TIME_FEATURES = len(TIME_SCALES) + len(PROGRESS_SCALES)
NUM_LOSS_FEATURES = 2 * len(LOSS_DECAYS)


class LossState(NamedTuple):
    """EMAs of the minibatch loss and its running minimum (VeLO's loss features)."""

    ema: jax.Array  # [len(LOSS_DECAYS)]
    minimum: jax.Array  # []
    seen: jax.Array  # [] whether any loss has been seen


def init_loss_state() -> LossState:
    return LossState(jnp.zeros(len(LOSS_DECAYS), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.bool_))


def update_loss_state(state: LossState, loss: jax.Array) -> LossState:
    """Fold a new minibatch loss into the EMAs (the first loss initialises them)."""
    loss = jnp.asarray(loss, jnp.float32)
    decays = jnp.asarray(LOSS_DECAYS, jnp.float32)
    ema = jnp.where(state.seen, decays * state.ema + (1.0 - decays) * loss, loss)
    minimum = jnp.where(state.seen, jnp.minimum(state.minimum, loss), loss)
    return LossState(ema, minimum, jnp.ones((), jnp.bool_))


def loss_features(state: LossState, loss: jax.Array) -> jax.Array:
    """[6] scale-free loss features from the updated `state` and the current loss."""
    loss = jnp.asarray(loss, jnp.float32)
    scale = jnp.abs(state.minimum) + 1e-8
    excess = jnp.log1p(jnp.maximum(state.ema - state.minimum, 0.0) / scale)
    deviation = jnp.tanh((loss - state.ema) / (jnp.abs(state.ema) + 1e-8))
    return jnp.concatenate([excess, deviation])

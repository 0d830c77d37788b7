"""A VeLO-style learned optimizer: a per-tensor LSTM hypernetwork emitting per-parameter MLPs.

Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up":

1. Each parameter tensor gets a vector of tensor-level features: training progress, loss
   features (EMAs against a running minimum), log-variance of each momentum, log mean and
   log variance of the rms accumulator, log parameter RMS, and a one-hot of the tensor's rank
   (0, 1, 2, 3, ≥4). Global context: the max over tensors of those features is appended.
2. An LSTM (shared weights, one state per tensor) reads them every step. Its hidden state gives
   per tensor (a) coefficients c over a bank of K per-parameter MLP weight sets, mixed as
   weights = 100 · mean_k(c_k · bank_k), and (b) a learning-rate multiplier exp(ℓ).
3. The mixed tiny MLP (ReLU, default 17 → 4 → 4 → 2) reads the normalised per-parameter
   features (lopt.learned.features; VeLO's momentum 0.9/0.99/0.999, rms 0.999 and factored
   0.9/0.99/0.999) and emits direction d and magnitude m:
       Δp = −step_mult · d · exp(exp_mult · m) · exp(ℓ) · max(rms(p), rms_floor)
   with step_mult = exp_mult = 1e-3. The RMS floor (our choice, default 1e-2) lets tensors that
   start at zero (biases) move; VeLO's form multiplies by rms(p) alone.

VeLO's sizes are lstm_hidden 512 and bank 256 (about 2.3M meta-parameters with its heads);
`velo_small()` uses 32 and 16 for CPU work. The LSTM work is per tensor, so its cost does not
grow with the number of parameters; the per-parameter MLP is fused like `MLPOptimizer`'s.

Speed: the per-tensor scalar work (statistics → features, LSTM, mixing) runs once for all
tensors as [tensors, ·] arrays. Same-shaped tensors that stay in XLA run as one vmapped group
(`base.tensor_groups`; a GPT-2's ~150 tensors have 9 shapes). On GPUs each large matrix runs in
two Pallas kernels (`kernels_2d.means_2d`, `kernels_2d.network_2d`) that clip the gradient and take
the momenta and rms one step in registers; only the factored row and column accumulators, which
need whole rows and columns, are updated by XLA first. W1 (docs/benchmarks.md) gives the
cost against adam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned import features as F
from lopt.learned import dispatch, kernels, kernels_2d, per_param_mlp
from lopt.learned.base import LearnedKind, check_params, only_member, preset, register, stack_groups, tensor_groups

VELO_ACCUMULATORS = F.AccumulatorConfig(
    momentum_decays=(0.9, 0.99, 0.999), rms_decays=(0.999,), factored_decays=(0.9, 0.99, 0.999)
)
MAX_RANK = 4
LOG_EPS = 1e-16
GRADIENT_CLIP = 1000.0


def check_groups(state_groups: int, groups: Sequence[tuple[list[int], str]], name: str) -> None:
    """The state must hold one accumulator group per `tensor_groups` group of the parameters."""
    if state_groups != len(groups):
        raise ValueError(
            f"{name}: the state holds {state_groups} tensor groups, the parameters make {len(groups)}: "
            "was it made by init() on parameters of these shapes?"
        )


class VeLOState(NamedTuple):
    """Step count, accumulators (one stacked `ParamAccumulators` per group of `tensor_groups`),
    loss statistics, and the LSTM state [num_tensors, hidden] (tensors in group order)."""

    count: jax.Array
    accumulators: tuple[F.ParamAccumulators, ...]
    loss: F.LossState
    lstm_h: jax.Array
    lstm_c: jax.Array


def statistic_values(
    g: jax.Array, p: jax.Array, acc: F.ParamAccumulators, preconditioners: list[jax.Array] | None = None
) -> list[jax.Array]:
    """The arrays whose means over a tensor `tensor_features` reads: the square of each raw
    per-parameter feature, each momentum, and (with an rms accumulator) sqrt(rms) and rms.
    `preconditioners` as in `F.raw_features`."""
    arrays = [jnp.square(f) for f in F.raw_features(g, p, acc, preconditioners)] + list(acc.momentum)
    if acc.rms:
        root = jnp.sqrt(acc.rms[0] + F.RSQRT_EPS)
        arrays += [root, jnp.square(root)]
    return arrays


def statistic_means(g: jax.Array, p: jax.Array, acc: F.ParamAccumulators) -> jax.Array:
    """[K] means of `statistic_values` over one tensor, in one variadic reduction
    (`F.tensor_means`; large matrices on GPUs use `VeLOOptimizer.kernel_means` instead)."""
    return F.tensor_means(tuple(statistic_values(g, p, acc)))


def tensor_features(means: jax.Array, ranks: Sequence[int], config: F.AccumulatorConfig) -> tuple[jax.Array, jax.Array]:
    """From `statistic_means` of T tensors ([T, K]) and their ranks: (inverse RMS of each raw
    per-parameter feature [T, F], the tensors' features [T, ·]), computed for all tensors at once.

    Tensor features, log-scaled by 0.1 so they sit near unit scale: log-variance of each
    momentum, log mean and log variance of sqrt(rms), log RMS of the parameters; then a one-hot
    of the tensor's rank (0, 1, 2, 3, ≥4). Variances are E[x²] − E[x]² (clamped at 0), one pass
    instead of two; in float32 this loses the variance of a momentum whose mean exceeds its
    spread by ~10³, well below where the 0.1·log feature moves."""
    count, num_m = config.num_features, len(config.momentum_decays)
    stats = [_log_variance(means[:, count + k], means[:, F.FIRST_MOMENTUM_FEATURE + k]) for k in range(num_m)]
    if config.rms_decays:
        root_mean, root_square = means[:, count + num_m], means[:, count + num_m + 1]
        stats += [0.1 * jnp.log(root_mean + LOG_EPS), _log_variance(root_mean, root_square)]
    stats.append(0.1 * jnp.log(jnp.sqrt(means[:, F.PARAMETER_FEATURE] + 1e-30) + LOG_EPS))
    rank = jax.nn.one_hot(jnp.minimum(jnp.asarray(ranks, jnp.int32), MAX_RANK), MAX_RANK + 1, dtype=jnp.float32)
    inverse_rms = jax.lax.rsqrt(means[:, :count] + F.NORMALISER_EPS)
    return inverse_rms, jnp.concatenate([jnp.stack(stats, axis=1), rank], axis=1)


def _log_variance(mean: jax.Array, mean_square: jax.Array) -> jax.Array:
    return 0.1 * jnp.log(jnp.maximum(mean_square - jnp.square(mean), 0.0) + LOG_EPS)


def lstm_step(weights: dict[str, jax.Array], x: jax.Array, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One LSTM step (Hochreiter & Schmidhuber 1997; forget-gate bias +1)."""
    gates = x @ weights["wx"] + h @ weights["wh"] + weights["b"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


@register(preset="velo")
@dataclasses.dataclass(frozen=True)
class VeLOOptimizer(LearnedKind):
    """The VeLO-style hypernetwork optimizer (see the module docstring)."""

    kind: ClassVar[str] = "velo"
    lstm_hidden: int = 512
    bank_size: int = 256
    mlp_hidden: tuple[int, ...] = (4, 4)
    accumulators: F.AccumulatorConfig = VELO_ACCUMULATORS
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    rms_floor: float = 1e-2
    fused_min_size: int = dispatch.KERNEL_MIN_SIZE
    kernel: str = "auto"

    def __post_init__(self) -> None:
        dispatch.check_kernel(self.kernel, "VeLOOptimizer")

    def kernel_for(self, p: jax.Array, backend: str) -> str:
        """How tensor `p` runs its per-parameter work: "xla" (fused jnp), or the 2-D Pallas
        kernels of `lopt.learned.kernels` ("pallas"; "interpret" through Pallas' interpreter)
        for matrices of at least `fused_min_size` elements; "auto" picks "pallas" on GPUs."""
        return dispatch.matrix_kernel(self.kernel, p, self.fused_min_size, backend)

    @property
    def mlp_sizes(self) -> list[int]:
        return [self.accumulators.num_features, *self.mlp_hidden, 2]

    @property
    def num_mlp_weights(self) -> int:
        return per_param_mlp.num_layer_weights(self.mlp_sizes)

    @property
    def num_tensor_features(self) -> int:
        per_tensor = (
            len(self.accumulators.momentum_decays) + (2 if self.accumulators.rms_decays else 0) + 1 + MAX_RANK + 1
        )
        return 2 * per_tensor + F.NUM_TIME_FEATURES + F.NUM_LOSS_FEATURES

    def init_meta(self, key: jax.Array) -> dict[str, Any]:
        """theta: LSTM weights, mixing and LR heads, and the bank of per-parameter MLP weights."""
        k_x, k_h, k_mix, k_lr, k_bank = jax.random.split(key, 5)
        inputs, hidden = self.num_tensor_features, self.lstm_hidden
        lstm = {
            "wx": per_param_mlp.dense_init(k_x, inputs, 4 * hidden)["w"],
            "wh": per_param_mlp.dense_init(k_h, hidden, 4 * hidden)["w"],
            "b": jnp.zeros((4 * hidden,), jnp.float32),
        }
        mix = per_param_mlp.dense_init(k_mix, hidden, self.bank_size, scale=0.01)
        mix["b"] = jnp.ones((self.bank_size,), jnp.float32)  # c ≈ 1: start from the bank's mean
        lr_head = per_param_mlp.dense_init(k_lr, hidden, 1, scale=0.01)
        # bank entries scaled so that 100 · mean_k(bank_k) has LeCun variance at c = 1
        sizes = self.mlp_sizes
        bank_keys = jax.random.split(k_bank, len(sizes) - 1)
        columns = []
        for k, fan_in, fan_out in zip(bank_keys, sizes[:-1], sizes[1:]):
            std = jnp.sqrt(self.bank_size / fan_in) / 100.0
            columns.append(jax.random.normal(k, (self.bank_size, fan_in * fan_out), jnp.float32) * std)
            columns.append(jnp.zeros((self.bank_size, fan_out), jnp.float32))
        return {"lstm": lstm, "mix": mix, "lr": lr_head, "bank": jnp.concatenate(columns, axis=1)}

    def groups(self, params: Sequence[jax.Array], backend: str) -> list[tuple[list[int], str]]:
        """`tensor_groups` of the parameter leaves, with each tensor's `kernel_for` path."""
        return tensor_groups(params, [self.kernel_for(p, backend) for p in params])

    def _xla_step(
        self,
        g: jax.Array,
        p: jax.Array,
        acc: F.ParamAccumulators,
        inverse_rms: jax.Array,
        scale: jax.Array,
        weights: jax.Array,
    ) -> jax.Array:
        """One tensor's step (before the sign) in jnp; vmapped over a group of same-shaped tensors."""
        network = per_param_mlp.fused if p.size >= self.fused_min_size else per_param_mlp.reference
        return self._step(
            F.raw_features(g, p, acc),
            inverse_rms,
            scale,
            per_param_mlp.unflatten_layers(weights, self.mlp_sizes),
            network,
        )

    def _step(
        self, features: list[jax.Array], inverse_rms, scale: jax.Array, layers: list, network=per_param_mlp.fused
    ) -> jax.Array:
        """The step (before the sign) from raw features, each feature's inverse RMS over the
        tensor, the tensor's scale and the mixed network (the XLA path and the kernel's body)."""
        direction, magnitude = network([f * s for f, s in zip(features, inverse_rms)], layers)
        return self.step_mult * direction * jnp.exp(self.exp_mult * magnitude) * scale

    @property
    def num_statistics(self) -> int:
        """Length of `statistic_values`' list."""
        config = self.accumulators
        return config.num_features + len(config.momentum_decays) + (2 if config.rms_decays else 0)

    def advance(
        self, g: jax.Array, p: jax.Array, acc: F.ParamAccumulators
    ) -> tuple[jax.Array, jax.Array, F.ParamAccumulators]:
        """The elementwise start of a step, as the kernels run it on blocks: clip the gradient
        and take the momenta and rms accumulators one step (VeLO's decays are fixed, so they
        are constants in the kernels). `acc` holds no factored accumulators: those need whole
        rows and columns and are updated before the kernels run."""
        g = jnp.clip(g, -GRADIENT_CLIP, GRADIENT_CLIP)
        config = self.accumulators
        return g, p, F.update_accumulators(acc, g, F.Decays(config.momentum_decays, config.rms_decays, ()))

    def kernel_means(
        self, g: jax.Array, p: jax.Array, acc: F.ParamAccumulators, *, interpret: bool = False
    ) -> jax.Array:
        """`statistic_means` of a matrix in the `kernels_2d.means_2d` kernel, from the raw float32
        gradient, the momenta and rms accumulators before this step and the factored ones after
        it: the accumulators are advanced in registers (`advance`) rather than in a pass of their
        own, which ran at a third of the memory bandwidth."""
        values = lambda g, p, acc, preconditioners: statistic_values(*self.advance(g, p, acc), preconditioners)
        return F.feature_means(g, p, acc, values, self.num_statistics, kernel=True, interpret=interpret)

    def kernel_step(
        self,
        g: jax.Array,
        p: jax.Array,
        acc: F.ParamAccumulators,
        scalars: jax.Array,
        weights: jax.Array,
        row: int,
        *,
        interpret: bool = False,
    ) -> tuple[jax.Array, F.ParamAccumulators]:
        """One matrix's step (before the sign) and its advanced accumulators, from one
        `kernels_2d.network_2d` kernel that reads row `row` of the step's tables (`scalars`: the
        inverse RMS of each feature, then the scale). Inputs as for `kernel_means`; factored
        preconditioners are formed in-kernel from row and column factors."""
        num_m, num_f = len(acc.momentum), self.accumulators.num_features

        def body(full, rows, cols, scalars, layers):
            g, p, advanced = self.advance(*F.from_kernel_blocks(full, num_m))
            features = F.raw_features(g, p, advanced, [r * c for r, c in zip(rows, cols)])
            return [self._step(features, scalars[:num_f], scalars[num_f], layers), *advanced.momentum, *advanced.rms]

        step, *state = kernels_2d.network_2d(
            body,
            *F.kernel_operands(g, p, acc),
            scalars,
            weights,
            row=row,
            num_scalars=num_f + 1,
            layer_sizes=self.mlp_sizes,
            num_outputs=1 + num_m + len(acc.rms),
            in_place=[(2 + k, 1 + k) for k in range(num_m + len(acc.rms))],
            interpret=interpret,
        )
        return step, F.ParamAccumulators(tuple(state[:num_m]), tuple(state[num_m:]), acc.factored)

    def transform(self, theta: dict[str, Any], *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
        decays = F.initial_decays(self.accumulators)

        def init(params):
            leaves = jax.tree.leaves(params)
            accumulators = [
                F.init_stacked_accumulators(leaves, indices, self.accumulators)
                for indices, _ in self.groups(leaves, dispatch.backend())
            ]
            zeros = jnp.zeros((len(leaves), self.lstm_hidden), jnp.float32)
            return VeLOState(
                count=jnp.zeros((), jnp.int32),
                accumulators=tuple(accumulators),
                loss=F.init_loss_state(),
                lstm_h=zeros,
                lstm_c=zeros,
            )

        def update(grads, state, params=None, *, loss=None, **extra_args):
            del extra_args
            check_params(params, "VeLOOptimizer")
            if loss is None:
                raise ValueError("VeLOOptimizer reads the loss: call update(..., loss=loss)")
            loss_state = F.update_loss_state(state.loss, loss)
            grad_leaves, treedef = jax.tree.flatten(grads)
            param_leaves = treedef.flatten_up_to(params)
            groups = self.groups(param_leaves, dispatch.backend())
            check_groups(len(state.accumulators), groups, "VeLOOptimizer")
            # XLA groups: clipped gradients and advanced accumulators. Kernel tensors (groups of
            # one): raw gradients, which the kernels clip, and only the factored accumulators
            # advanced here.
            clip = lambda g: jnp.clip(g, -GRADIENT_CLIP, GRADIENT_CLIP)
            grad_groups = [
                clip(g) if path == "xla" else g for g, (_, path) in zip(stack_groups(grad_leaves, groups), groups)
            ]
            param_groups = stack_groups(param_leaves, groups)
            step_accumulators = jax.vmap(F.update_accumulators, in_axes=(0, 0, None))
            accumulators, means = [], []
            for (_, path), g, p, acc in zip(groups, grad_groups, param_groups, state.accumulators):
                if path == "xla":
                    acc = step_accumulators(acc, g, decays)
                    means.append(jax.vmap(statistic_means)(g, p, acc))
                else:
                    factored = step_accumulators(F.ParamAccumulators((), (), acc.factored), clip(g), decays).factored
                    acc = acc._replace(factored=factored)
                    means.append(self.kernel_means(g[0], p[0], only_member(acc), interpret=path == "interpret")[None])
                accumulators.append(acc)
            ranks = [param_leaves[i].ndim for indices, _ in groups for i in indices]
            inverse_rms, per_tensor = tensor_features(jnp.concatenate(means), ranks, self.accumulators)
            shared = jnp.concatenate([F.time_features(state.count, num_steps), F.loss_features(loss_state, loss)])
            context = jnp.broadcast_to(per_tensor.max(axis=0), per_tensor.shape)
            inputs = jnp.concatenate(
                [per_tensor, context, jnp.broadcast_to(shared, (per_tensor.shape[0], shared.size))], axis=1
            )
            h, c = lstm_step(theta["lstm"], inputs, state.lstm_h, state.lstm_c)
            coefficients = h @ theta["mix"]["w"] + theta["mix"]["b"]  # [tensors, bank]
            lr_mult = jnp.exp(h @ theta["lr"]["w"] + theta["lr"]["b"])[:, 0]
            mixed = 100.0 * (coefficients @ theta["bank"]) / self.bank_size  # [tensors, mlp weights]
            scale = lr_mult * jnp.maximum(1.0 / inverse_rms[:, F.PARAMETER_FEATURE], self.rms_floor)

            if any(path != "xla" for _, path in groups):
                scalar_table = kernels.flat_table(jnp.concatenate([inverse_rms, scale[:, None]], axis=1))
                weight_table = kernels.flat_table(mixed)
            updates, start = [None] * len(param_leaves), 0
            for group, ((indices, path), g, p, acc) in enumerate(zip(groups, grad_groups, param_groups, accumulators)):
                rows = slice(start, start + len(indices))
                if path == "xla":
                    steps = jax.vmap(self._xla_step)(g, p, acc, inverse_rms[rows], scale[rows], mixed[rows])
                else:
                    step, advanced = self.kernel_step(
                        g[0], p[0], only_member(acc), scalar_table, weight_table, start, interpret=path == "interpret"
                    )
                    steps, accumulators[group] = step[None], jax.tree.map(lambda x: x[None], advanced)
                for step, i in zip(steps, indices):
                    updates[i] = (-step).astype(param_leaves[i].dtype)
                start += len(indices)
            new_state = VeLOState(state.count + 1, tuple(accumulators), loss_state, h, c)
            return treedef.unflatten(updates), new_state

        return optax.GradientTransformationExtraArgs(init, update)


@preset("velo_small")
def velo_small(**kwargs: Any) -> VeLOOptimizer:
    """A CPU-sized VeLO: LSTM hidden 32, bank of 16 MLPs."""
    return VeLOOptimizer(lstm_hidden=kwargs.pop("lstm_hidden", 32), bank_size=kwargs.pop("bank_size", 16), **kwargs)

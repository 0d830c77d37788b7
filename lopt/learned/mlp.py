"""Per-parameter MLP learned optimizers (the small_fc_lopt / AdafacMLPLOpt line).

Each parameter's update comes from a small MLP shared by every parameter of every tensor:

    features f = normalised accumulator features of (g, p, state)       (lopt.learned.features)
    (d, m)     = MLP(f; scalar training-progress [and loss] features)   (ReLU, hidden widths H)
    Δp         = −step_mult · d · exp(exp_mult · m)

with step_mult = exp_mult = 1e-3 (Metz et al. 2022, "Practical tradeoffs between memory,
compute, and performance in learned optimizers", and learned_optimization's defaults). The
accumulator decays are meta-learned through a logit parameterisation, as in AdafacMLPLOpt.

Presets:
- `small_mlp()`: momentum at 0.9/0.99/0.999 and rms at 0.999, hidden 32×2 (MLPLOpt-sized);
- `factored_mlp()`: Adafactor-style factored second moments at 0.9/0.99/0.999, one momentum
  and no full rms accumulator, hidden 4×2 (AdafacMLPLOpt): per-parameter state is one
  momentum, so memory matches SGD-with-momentum plus O(rows + columns).

Speed (`kernel`): on GPUs, networks wider than 16 run per large tensor in the two Pallas
kernels of `lopt.learned.kernels` (feature statistics; features + MLP on the tensor cores); on
CPUs in the native kernel of `lopt.learned.native` (features and network in one call for every
tensor); elsewhere the network is unrolled elementwise math that XLA fuses. W1 (docs/benchmarks.md)
gives the cost against adam.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned import features as F
from lopt.learned import dispatch, kernels, native, per_param_mlp
from lopt.learned.base import LearnedKind, check_params, preset, register


class MLPOptimizerState(NamedTuple):
    """Step count, each parameter tensor's accumulators (in leaf order), and loss statistics."""

    count: jax.Array
    accumulators: tuple[F.ParamAccumulators, ...]
    loss: F.LossState


def apply_shared_network(
    inputs: list[list[jax.Array]],
    layers: list[tuple[jax.Array, jax.Array]],
    fuse: list[bool],
    concatenate: bool,
    cpu_kernel: bool = False,
) -> list[tuple[jax.Array, jax.Array]]:
    """Evaluate one network on every tensor's features (fused elementwise math for the tensors
    marked `fuse`, the stacked-matmul reference for the rest; every tensor in the CPU kernel of
    `lopt.learned.native` when `cpu_kernel`). Returns flat (direction, magnitude) per tensor.

    concatenate: flatten and concatenate the tensors of each kind into one pass. That keeps the
    traced program one network long however many tensors a model has (a GPT-2 has ~150), so
    compile time stays flat, but the concatenation materialises every feature once more.
    Per tensor is faster for narrow networks, concatenated compiles where wide ones per tensor
    do not (docs/benchmarks.md).
    """
    if cpu_kernel:  # one kernel call reads every tensor in place: nothing to concatenate
        return native.mlp_tensors(inputs, layers)
    networks = {True: per_param_mlp.fused, False: per_param_mlp.reference}
    if not concatenate:
        return [networks[f]([x.reshape(-1) for x in feats], layers) for feats, f in zip(inputs, fuse)]
    outputs: list[tuple[jax.Array, jax.Array] | None] = [None] * len(inputs)
    for wanted, network in networks.items():
        members = [i for i, f in enumerate(fuse) if f == wanted]
        if not members:
            continue
        sizes = [inputs[i][0].size for i in members]
        columns = [jnp.concatenate([inputs[i][k].reshape(-1) for i in members]) for k in range(len(inputs[members[0]]))]
        direction, magnitude = network(columns, layers)
        offsets = np.cumsum([0, *sizes])
        for i, start, stop in zip(members, offsets[:-1], offsets[1:]):
            outputs[i] = (direction[start:stop], magnitude[start:stop])
    return outputs


def _logit(p: jax.Array) -> jax.Array:
    return jnp.log(p) - jnp.log1p(-p)


def scalar_features(
    count: jax.Array, num_steps: int | jax.Array, loss_state: F.LossState | None, loss: Any
) -> jax.Array:
    """The per-step scalar inputs: progress features, then loss features when used."""
    parts = [F.time_features(count, num_steps)]
    if loss_state is not None:
        parts.append(F.loss_features(loss_state, loss))
    return jnp.concatenate(parts)


@register
@dataclasses.dataclass(frozen=True)
class MLPOptimizer(LearnedKind):
    """A per-parameter MLP learned optimizer (see the module docstring).

    hidden_sizes: the MLP's hidden widths (4 to 32 in the literature).
    accumulators: which momentum / rms / factored accumulators feed the features.
    step_mult, exp_mult: the output scalings of Δp = −step_mult · d · exp(exp_mult · m).
    use_loss_features: also feed VeLO-style loss features (then `update` needs `loss=`).
    learn_decays: meta-learn the accumulator decays.
    fused_min_size: tensors with at least this many elements evaluate the MLP as fused
      elementwise math (one pass over memory; the choice for large tensors on accelerators);
      smaller ones use the stacked-matmul reference, which compiles much faster (the unrolled
      graph under `jax.grad` takes minutes to compile on a CPU). Both give the same numbers;
      0 fuses everything.
    concatenate_tensors: run the network once over all tensors concatenated (flat compile time,
      more memory traffic) instead of once per tensor; None chooses by width: concatenate when
      the widest hidden layer exceeds 16 (see `apply_shared_network` for the measurements).
    kernel: how large tensors run the per-parameter pass. "xla": jnp that XLA fuses; "pallas":
      the Pallas kernel of `lopt.learned.kernels` (GPU; matrix products for the hidden layers);
      "interpret": that kernel through Pallas' interpreter (tests on CPU); "native": the CPU
      kernel of `lopt.learned.native` for every tensor (features and network in it, or the
      network alone with factored accumulators); "auto": "pallas" on GPUs for networks wider
      than 16 without factored accumulators, "native" on CPUs for networks wider than 16 when
      the kernel builds, else "xla".
    """

    kind: ClassVar[str] = "mlp"
    hidden_sizes: tuple[int, ...] = (32, 32)
    accumulators: F.AccumulatorConfig = F.AccumulatorConfig()
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    use_loss_features: bool = False
    learn_decays: bool = True
    fused_min_size: int = dispatch.KERNEL_MIN_SIZE
    concatenate_tensors: bool | None = None
    kernel: str = "auto"

    def __post_init__(self) -> None:
        if not self.hidden_sizes or min(self.hidden_sizes) <= 0:
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        dispatch.check_kernel(self.kernel, "MLPOptimizer")
        if self.kernel in ("pallas", "interpret") and self.accumulators.factored_decays:
            raise ValueError(
                "the Pallas per-parameter pass does not handle factored accumulators; use kernel='xla' or 'auto'"
            )

    @property
    def num_scalar_features(self) -> int:
        return F.NUM_TIME_FEATURES + (F.NUM_LOSS_FEATURES if self.use_loss_features else 0)

    def init_meta(self, key: jax.Array) -> dict[str, Any]:
        """theta: {'layers': [{'w', 'b'}, ...], 'decay_logits': {'momentum', 'rms', 'factored'}}
        (decay groups with no accumulator are left out).

        The first layer's rows are the per-parameter features then the scalar features."""
        sizes = [self.accumulators.num_features + self.num_scalar_features, *self.hidden_sizes, 2]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [per_param_mlp.dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
        decays = F.initial_decays(self.accumulators)
        logits = {k: _logit(v) for k, v in decays._asdict().items() if v.size}  # orbax stores no empty arrays
        return {"layers": layers, "decay_logits": logits}

    def decays(self, theta: dict[str, Any]) -> F.Decays:
        if not self.learn_decays:
            return F.initial_decays(self.accumulators)
        logits, initial = theta["decay_logits"], F.initial_decays(self.accumulators)
        return F.Decays(*(jax.nn.sigmoid(logits[k]) if k in logits else getattr(initial, k) for k in F.Decays._fields))

    def per_tensor_layers(self, theta: dict[str, Any], scalars: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """The MLP's layers with the scalar features folded into the first layer's bias."""
        first, *rest = theta["layers"]
        count = self.accumulators.num_features
        bias = first["b"] + scalars @ first["w"][count:]
        return [(first["w"][:count], bias)] + [(layer["w"], layer["b"]) for layer in rest]

    def kernel_for_backend(self, backend: str) -> str:
        """The per-parameter pass used on `backend` ("cpu", "gpu", "tpu") for large tensors."""
        factored = bool(self.accumulators.factored_decays)
        return dispatch.network_kernel(self.kernel, self.hidden_sizes, factored, backend, native.available)

    def _kernel_pass(
        self,
        g: jax.Array,
        p: jax.Array,
        acc: F.ParamAccumulators,
        layers: list[tuple[jax.Array, jax.Array]],
        interpret: bool,
    ) -> jax.Array:
        """One tensor's step from its updated accumulators `acc` in two Pallas kernels
        (`lopt.learned.kernels`): feature statistics, then normalised features, network, step."""
        num_m = len(acc.momentum)
        step_mult, exp_mult = self.step_mult, self.exp_mult

        def features(arrays):
            return F.raw_features(*F.from_kernel_blocks(arrays, num_m))

        def body(arrays, inverse_rms, network):
            direction, magnitude = network([f * s for f, s in zip(features(arrays), inverse_rms)])
            return -step_mult * direction * jnp.exp(exp_mult * magnitude)

        flat = [x.reshape(-1) for x in F.kernel_operands(g, p, acc)[0]]
        mean_squares = kernels.statistics_pass(
            features, flat, num_features=self.accumulators.num_features, interpret=interpret
        )
        inverse_rms = jax.lax.rsqrt(mean_squares + F.NORMALISER_EPS)
        return kernels.network_pass(body, flat, inverse_rms, layers, interpret=interpret)

    def tensor_steps(
        self,
        theta: dict[str, Any],
        scalars: jax.Array,
        tensors: list[tuple[jax.Array, jax.Array]],
        accumulators: list[F.ParamAccumulators],
        params: Any,
    ) -> list[jax.Array]:
        """Each tensor's step −step_mult · d · exp(exp_mult · m) from its float32 (gradient,
        parameter) pair and updated accumulators: the network's part of `update`, which kinds built
        on this one (`lopt.learned.unf`) replace. `params`: the parameter tree (its structure)."""
        del params
        layers = self.per_tensor_layers(theta, scalars)
        kernel = self.kernel_for_backend(dispatch.backend())
        steps: list[jax.Array | None] = [None] * len(tensors)
        if kernel == "native" and not self.accumulators.factored_decays:
            # the native CPU kernel computes the features too (not the factored ones)
            pending = range(len(tensors))
            outputs = native.features_mlp([(g32, p32, acc) for (g32, p32), acc in zip(tensors, accumulators)], layers)
        else:
            inputs = {}
            for i, ((g32, p32), acc) in enumerate(zip(tensors, accumulators)):
                if kernel in ("pallas", "interpret") and p32.size >= self.fused_min_size:
                    steps[i] = self._kernel_pass(g32, p32, acc, layers, kernel == "interpret")
                else:
                    inputs[i] = F.normalised_features(g32, p32, acc, kernel=None if self.kernel == "auto" else False)
            concatenate = self.concatenate_tensors
            if concatenate is None:
                concatenate = max(self.hidden_sizes) > 16
            pending = list(inputs)
            outputs = (
                apply_shared_network(
                    list(inputs.values()),
                    layers,
                    [tensors[i][1].size >= self.fused_min_size for i in pending],
                    concatenate,
                    cpu_kernel=kernel == "native",
                )
                if pending
                else []
            )
        for i, (d, m) in zip(pending, outputs):
            steps[i] = -self.step_mult * d * jnp.exp(self.exp_mult * m)
        return steps

    def transform(self, theta: dict[str, Any], *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:

        def init(params):
            return MLPOptimizerState(
                count=jnp.zeros((), jnp.int32),
                accumulators=tuple(F.init_accumulators(p, self.accumulators) for p in jax.tree.leaves(params)),
                loss=F.init_loss_state(),
            )

        def update(grads, state, params=None, *, loss=None, **extra_args):
            del extra_args
            check_params(params, type(self).__name__)
            loss_state = state.loss
            if self.use_loss_features:
                if loss is None:
                    raise ValueError(f"this {type(self).__name__} uses loss features: call update(..., loss=loss)")
                loss_state = F.update_loss_state(loss_state, loss)
            decays = self.decays(theta)
            scalars = scalar_features(state.count, num_steps, loss_state if self.use_loss_features else None, loss)
            grad_leaves, treedef = jax.tree.flatten(grads)
            param_leaves = treedef.flatten_up_to(params)
            tensors = [(g.astype(jnp.float32), p.astype(jnp.float32)) for g, p in zip(grad_leaves, param_leaves)]
            accumulators = [
                F.update_accumulators(acc, g32, decays) for (g32, _), acc in zip(tensors, state.accumulators)
            ]
            steps = self.tensor_steps(theta, scalars, tensors, accumulators, params)
            updates = [step.reshape(p.shape).astype(p.dtype) for step, p in zip(steps, param_leaves)]
            new_state = MLPOptimizerState(state.count + 1, tuple(accumulators), loss_state)
            return treedef.unflatten(updates), new_state

        return optax.GradientTransformationExtraArgs(init, update)


@preset("small_mlp")
def small_mlp(hidden_sizes: tuple[int, ...] = (32, 32), **kwargs: Any) -> MLPOptimizer:
    """MLPLOpt-sized: momentum at 0.9/0.99/0.999, rms at 0.999, hidden 32×2."""
    return MLPOptimizer(hidden_sizes=hidden_sizes, **kwargs)


@preset("factored_mlp")
def factored_mlp(hidden_sizes: tuple[int, ...] = (4, 4), **kwargs: Any) -> MLPOptimizer:
    """AdafacMLPLOpt-style: factored second moments at 0.9/0.99/0.999, one momentum, hidden 4×2."""
    accumulators = F.AccumulatorConfig(momentum_decays=(0.9,), rms_decays=(), factored_decays=(0.9, 0.99, 0.999))
    return MLPOptimizer(hidden_sizes=hidden_sizes, accumulators=accumulators, **kwargs)

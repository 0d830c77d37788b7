"""The generalist learned optimizer: a Celo2-class per-parameter rule that picks a direction,
with the step length set by a learning rate and schedule.

Moudgil, Knyazev & Belilovsky 2026, "Celo2" (ICLR 2026, arXiv 2602.19142) found that what
makes a small learned rule transfer to models far larger than it was meta-trained on is that
it decides only the *direction* of each tensor's update:

1. Per-parameter features (lopt.learned.features; Celo2's accumulators: momentum at
   0.9/0.99/0.999, rms at 0.95, Adafactor factored moments at 0.9/0.99/0.999), each divided
   by its RMS over the tensor (normalised inputs).
2. A shared MLP (ReLU, hidden 8×2) maps them to a direction d per parameter.
3. Hidden-layer matrices (rank ≥ 2; conv kernels as [fan_in, fan_out]) have d orthogonalised
   by 5 Newton–Schulz iterations with the Muon coefficients (3.4445, −4.7750, 2.0315)
   (Jordan et al. 2024), then **every step's d is normalised to unit RMS over the tensor**
   (normalised output — the largest single gain in Celo2's ablation).
4. Parameters that are not matrices (biases, norm scales), biases of any rank (attention's
   per-head biases) and those whose path matches `adam_paths` (embeddings) take AdamW with
   β = (0.9, 0.95), as in Celo2.
5. Δp = −η(t) · (d̂ + λ p) with η(t) = exp(θ_lr) · schedule(t / num_steps): linear warm-up over
   `warmup_fraction` of the run, then cosine decay to `final_lr_fraction`; λ the decoupled
   weight decay. θ_lr (the log learning rate) is a meta-parameter, so ES can move it, and
   `scale_learning_rate` is how a user (or `lopt eval`'s sweep) tunes it.

Our one departure: `init="adam"` starts the network as the identity on the normalised Adam
feature m₀.₉ · rsqrt(v₀.₉₅) (two ReLU units carry +x and −x through each layer; the other
weights are small random values), so meta-training starts from Adam's direction — Muon-like
on matrices after step 3 — instead of from a random rule (Celo's `celo_adam` and
learned_optimization's `nn_adam` start learned rules from Adam in the same spirit).
`init="random"` is Celo2's truncated-normal start.

Two further ways to give meta-training room without giving up the hand-designed start:

- `nominal=True`: d = x_adam + f_θ(features), the hand-designed direction plus a learned
  correction — the "nominal term" of Harrison, Metz & Sohl-Dickstein 2022 ("A closer look at
  learned optimization: stability, robustness, and inductive biases"; learned_optimization's
  `adafac_nominal`). The network is a normal-scale random MLP whose output layer starts at a tenth
  of LeCun scale, so at θ₀ the rule is (nearly) the Adam-direction start, yet every hidden unit is
  alive and an ES perturbation of any weight moves the update at first order.
- `schedule_knots=K`: a learned schedule on top of the hand-written one,
  η(t) = exp(θ_lr) · schedule(t/T) · exp(s(t/T)), s the piecewise-linear interpolation of K
  learned log-multipliers at evenly spaced points of training progress (clipped to ±4), zero at
  θ₀. Celo (Moudgil et al. 2025) meta-trains a step-size head in its own phase for the same reason:
  the step length carries most of what a short meta-training budget can learn.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import matrix
from lopt.learned import dispatch, per_param_mlp
from lopt.learned import features as F
from lopt.learned.base import LearnedKind, check_params, preset, register, stack_groups, tensor_groups

CELO2_ACCUMULATORS = F.AccumulatorConfig(
    momentum_decays=(0.9, 0.99, 0.999), rms_decays=(0.95,), factored_decays=(0.9, 0.99, 0.999)
)
MUON_COEFFICIENTS = matrix.MUON_COEFFICIENTS
GRADIENT_CLIP = 1000.0
OUTPUT_EPS = 1e-12
INITS = ("adam", "random")
MAX_SCHEDULE_LOG_MULTIPLIER = 4.0  # the learned schedule scales η(t) by at most e^±4 (~55×)
SCHEDULES = ("cosine", "linear", "constant")
FUSED_MIN_SIZE = 1 << 16  # elements; as MLPOptimizer.fused_min_size: unrolled network above, matmuls below
LR_MULTIPLIERS = (1 / 10, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 10.0)
ADAM_EPS_ROOT = 1e-16
LEARNED, OTHER = "learned", "adam"  # the two branches of `GeneralistOptimizer.labels`
NS_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def newton_schulz(
    x: jax.Array,
    steps: int = 5,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: Any = None,
) -> jax.Array:
    """`lopt.matrix.newton_schulz` (Muon's quintic iteration, on the shorter side) in `dtype`
    (None: x's). Muon's reference runs it in bfloat16: the iteration only has to bring the
    singular values near 1, which the tensor cores do in bf16 several times faster than in
    float32; the result comes back in x's dtype."""
    cast = None if dtype is None else (lambda y: y.astype(dtype))
    return matrix.newton_schulz(x, steps, coefficients, eps, cast, jnp.linalg.norm).astype(x.dtype)


def newton_schulz_many(xs: list[jax.Array], steps: int = 5, dtype: Any = None) -> list[jax.Array]:
    """`newton_schulz` of each matrix of `xs`, the matrices of one shape stacked into one
    batched iteration (a transformer's 12 blocks have 4 shapes: 4 batched chains of matmuls
    instead of 48 chains of small ones, each too small to fill a GPU alone). Same values as
    one at a time: the batch axis is vmapped, so every matrix keeps its own norm. Groups are
    `lopt.learned.base.tensor_groups`' (VeLO's grouping by shape)."""
    out: list[Any] = [None] * len(xs)
    groups = tensor_groups(xs, ("xla",) * len(xs))
    for (indices, _), stacked in zip(groups, stack_groups(xs, groups)):
        result = jax.vmap(lambda m: newton_schulz(m, steps, dtype=dtype))(stacked)
        for j, i in enumerate(indices):
            out[i] = result[j]
    return out


def as_matrix(x: jax.Array) -> jax.Array:
    """A tensor of rank ≥ 2 as [fan_in, fan_out] (conv kernels: every axis but the last is fan-in)."""
    return x.reshape(-1, x.shape[-1])


def unit_rms(x: jax.Array) -> jax.Array:
    """x divided by its root-mean-square (Celo2's per-step output normalisation)."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x)) + OUTPUT_EPS)


def schedule_factor(
    step: jax.Array, num_steps: Any, kind: str, warmup_fraction: float, final_fraction: float
) -> jax.Array:
    """η(t)/η: linear warm-up over `warmup_fraction` of the run, then `kind` decay to
    `final_fraction` at t = num_steps (Loshchilov & Hutter 2017's cosine; Defazio et al. 2023
    for linear decay). `num_steps` may be traced (meta-training samples a horizon per run)."""
    t = step.astype(jnp.float32) + 1.0
    total = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    warmup = jnp.maximum(warmup_fraction * total, 1.0)
    ramp = jnp.minimum(t / warmup, 1.0)
    progress = jnp.clip((t - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    if kind == "cosine":
        decay = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif kind == "linear":
        decay = final_fraction + (1.0 - final_fraction) * (1.0 - progress)
    else:
        decay = jnp.ones_like(progress)
    return ramp * decay


def learned_schedule(knots: jax.Array, step: jax.Array, num_steps: Any) -> jax.Array:
    """exp(s(t/T)): s interpolates the log-multipliers `knots` (at evenly spaced points of
    progress 0..1) linearly, clipped to ±MAX_SCHEDULE_LOG_MULTIPLIER; 1 at knots = 0."""
    progress = (step.astype(jnp.float32) + 1.0) / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    points = jnp.linspace(0.0, 1.0, knots.shape[0])
    log_multiplier = jnp.interp(jnp.clip(progress, 0.0, 1.0), points, knots)
    return jnp.exp(jnp.clip(log_multiplier, -MAX_SCHEDULE_LOG_MULTIPLIER, MAX_SCHEDULE_LOG_MULTIPLIER))


class GeneralistState(NamedTuple):
    """The learned rule's state: each matrix's accumulators, in leaf order of the tensors it
    handles (the others are AdamW's, in optax's own state beside this one)."""

    accumulators: tuple[F.ParamAccumulators, ...]


@register
@dataclasses.dataclass(frozen=True)
class GeneralistOptimizer(LearnedKind):
    """The generalist learned optimizer (see the module docstring for the update).

    hidden_sizes: widths of the shared per-parameter MLP (Celo2: 8×2).
    accumulators: the features' accumulators (Celo2's by default).
    learning_rate: the initial η (θ_lr starts at its log); the default suits the unit-RMS step.
    orthogonalize: Newton–Schulz on matrix updates (Celo2); False is Celo2-base.
    ns_steps: Newton–Schulz iterations.
    ns_dtype: 'float32' or 'bfloat16' (Muon's choice): the Newton–Schulz iteration's dtype.
      bfloat16 is several times faster on GPU tensor cores and moves each matrix's update by a
      few percent (tests/test_generalist.py bounds it; docs/learned_optimizers.md measures the
      cost in training loss); float32 matches the float64 reference to 2e-4.
    adam_b1, adam_b2, adam_eps: AdamW on non-matrix tensors and `adam_paths` (Celo2: 0.9, 0.95).
    adam_paths: a regular expression; tensors whose '/'-joined path matches it take AdamW
      (flax's `nn.Embed` names its table 'embedding').
    weight_decay: decoupled weight decay λ (multiplied by η(t)).
    schedule, warmup_fraction, final_lr_fraction: η(t)'s shape over the run of `num_steps`.
    init: 'adam' (start from Adam's direction) or 'random' (Celo2's start).
    nominal: add Adam's direction to the network's output (the nominal term; needs init='random').
    schedule_knots: learned log-multipliers of η over training progress (0: none).
    kernel: where the per-tensor feature statistics of large matrices run (how, not what: never
      saved). "auto": the one-pass Pallas kernel (`lopt.learned.kernels_2d.means_2d`) on GPUs for
      matrices of at least dispatch.KERNEL_MIN_SIZE elements, XLA elsewhere; "xla"; "pallas";
      "interpret" (that kernel through Pallas' interpreter, for tests on CPUs).
    """

    kind: ClassVar[str] = "generalist"
    hidden_sizes: tuple[int, ...] = (8, 8)
    accumulators: F.AccumulatorConfig = CELO2_ACCUMULATORS
    learning_rate: float = 3e-3
    orthogonalize: bool = True
    ns_steps: int = 5
    ns_dtype: str = "float32"
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    adam_paths: str = "embed"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.0
    init: str = "adam"
    nominal: bool = False
    schedule_knots: int = 0
    kernel: str = "auto"

    def __post_init__(self) -> None:
        dispatch.check_kernel(self.kernel, "GeneralistOptimizer")
        if self.kernel == "native":
            raise ValueError(
                "GeneralistOptimizer: kernel 'native' is the MLP optimizers' CPU kernel; use auto, xla, "
                "pallas or interpret"
            )
        if self.nominal and self.init == "adam":
            raise ValueError(
                "nominal=True adds Adam's direction to the network's output, so the network must not "
                "carry it as well: use init='random' with nominal=True"
            )
        if not 0 <= self.schedule_knots <= 64 or self.schedule_knots == 1:
            raise ValueError(f"schedule_knots must be 0 (no learned schedule) or 2..64, got {self.schedule_knots}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 2:
            raise ValueError(f"hidden_sizes must be widths of at least 2, got {self.hidden_sizes}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(NS_DTYPES)}, got {self.ns_dtype!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError("warmup_fraction must lie in [0, 1) and final_lr_fraction in [0, 1]")
        if self.ns_steps < 0 or self.weight_decay < 0:
            raise ValueError("ns_steps and weight_decay must be non-negative")
        if not self.accumulators.rms_decays:
            raise ValueError("the generalist's Adam-feature start needs at least one rms decay")
        try:
            re.compile(self.adam_paths)
        except re.error as error:
            raise ValueError(f"adam_paths is not a regular expression: {error}") from None

    # -- meta-parameters -------------------------------------------------------------------

    @property
    def adam_feature(self) -> int:
        """Index of m₀ · rsqrt(v₀) among the features (the `init='adam'` pass-through)."""
        return self.accumulators.feature_names().index(
            f"m{self.accumulators.momentum_decays[0]}_rsqrt_v{self.accumulators.rms_decays[0]}"
        )

    def init_meta(self, key: jax.Array) -> dict[str, Any]:
        """theta: {'layers': [{'w', 'b'}, ...], 'log_learning_rate': [], 'schedule': [K] (with
        schedule_knots=K)}.

        init='adam': hidden units 0 and 1 of each layer carry relu(+x) and relu(−x) of the Adam
        feature x, the direction output is their difference (so d = x exactly), and every other
        weight is LeCun-normal × 0.01 — small enough to leave Adam's direction in charge, large
        enough that ES perturbations of theta are not at a symmetric point."""
        sizes = [self.accumulators.num_features, *self.hidden_sizes, 2]
        keys = jax.random.split(key, len(sizes) - 1)
        scale = 1.0 if self.init == "random" else 1e-4
        layers = []
        for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            # the nominal term's correction starts small (output layer at 0.1 x LeCun) but alive
            layer_scale = scale * (1e-2 if self.nominal and i == len(sizes) - 2 else 1.0)
            layers.append(
                {
                    "w": jax.random.normal(k, (fan_in, fan_out), jnp.float32) * np.sqrt(layer_scale / fan_in),
                    "b": jnp.zeros((fan_out,), jnp.float32),
                }
            )
        if self.init == "adam":
            x = self.adam_feature
            first = layers[0]["w"].at[:, :2].set(0.0).at[x, 0].set(1.0).at[x, 1].set(-1.0)
            layers[0] = {**layers[0], "w": first}
            for i in range(1, len(layers)):
                w = layers[i]["w"].at[:2, :].set(0.0).at[:, :2].set(0.0)
                if i < len(layers) - 1:
                    w = w.at[0, 0].set(1.0).at[1, 1].set(1.0)
                else:
                    w = w.at[0, 0].set(1.0).at[1, 0].set(-1.0)
                layers[i] = {**layers[i], "w": w}
        theta = {"layers": layers, "log_learning_rate": jnp.log(jnp.float32(self.learning_rate))}
        if self.schedule_knots:
            theta["schedule"] = jnp.zeros((self.schedule_knots,), jnp.float32)
        return theta

    lr_tuning_grid: ClassVar[tuple[float, ...]] = LR_MULTIPLIERS

    @staticmethod
    def scale_learning_rate(theta: dict[str, Any], multiplier: Any) -> dict[str, Any]:
        """theta with η multiplied by `multiplier` (may be traced: `lopt eval` vmaps a sweep)."""
        return {
            **theta,
            "log_learning_rate": theta["log_learning_rate"] + jnp.log(jnp.asarray(multiplier, jnp.float32)),
        }

    # -- the transformation -----------------------------------------------------------------

    def uses_learned_rule(self, path: str, shape: tuple[int, ...]) -> bool:
        """Matrices (rank ≥ 2) take the learned rule, unless their path matches `adam_paths` or
        they are biases: flax's attention keeps its per-head biases as [heads, head_dim] arrays,
        and a key bias's gradient is zero up to rounding (softmax cancels it), which no
        orthogonalisation should amplify to a unit-RMS step (nor truncated backprop through it
        to inf)."""
        return len(shape) >= 2 and not re.search(self.adam_paths, path) and path.rsplit("/", 1)[-1] != "bias"

    def labels(self, params: Any) -> Any:
        """LEARNED for the tensors the learned rule takes (`uses_learned_rule`), OTHER for those
        AdamW takes: the split of `transform`, and of `lopt.baselines.ortho_adam`, the start."""
        return jax.tree.map_with_path(
            lambda path, p: (
                LEARNED
                if self.uses_learned_rule(jax.tree_util.keystr(path, simple=True, separator="/"), p.shape)
                else OTHER
            ),
            params,
        )

    def _network_direction(
        self, g: jax.Array, p: jax.Array, acc: F.ParamAccumulators, layers: list[tuple[jax.Array, jax.Array]]
    ) -> jax.Array:
        """The network's direction for one tensor (step 2; plus Adam's with `nominal`)."""
        path = dispatch.matrix_kernel(self.kernel, g)
        inputs = F.normalised_features(g, p, acc, kernel=path != "xla", interpret=path == "interpret")
        network = per_param_mlp.fused if g.size >= FUSED_MIN_SIZE else per_param_mlp.reference
        direction, _ = network([f.reshape(-1) for f in inputs], layers)
        direction = direction.reshape(g.shape)
        if self.nominal:
            direction = direction + inputs[self.adam_feature]
        return direction

    def _finish(self, directions: list[jax.Array]) -> list[jax.Array]:
        """Step 3 on every tensor's direction: Newton–Schulz (batched over same-shape
        matrices), then unit RMS."""
        if self.orthogonalize:
            matrices = newton_schulz_many([as_matrix(d) for d in directions], self.ns_steps, NS_DTYPES[self.ns_dtype])
            directions = [m.reshape(d.shape) for m, d in zip(matrices, directions)]
        return [unit_rms(d) for d in directions]

    def scale_by_learned_rule(self, theta: dict[str, Any]) -> optax.GradientTransformation:
        """The direction-only learned rule (steps 1–3 of the module docstring) on every tensor
        it is given (`transform` gives it the matrices)."""
        layers = [(layer["w"], layer["b"]) for layer in theta["layers"]]
        decays = F.initial_decays(self.accumulators)

        def init(params):
            return GeneralistState(tuple(F.init_accumulators(p, self.accumulators) for p in jax.tree.leaves(params)))

        def update(grads, state, params=None):
            check_params(params, "GeneralistOptimizer")
            grad_leaves, treedef = jax.tree.flatten(grads)
            if len(state.accumulators) != len(grad_leaves):
                raise ValueError(
                    f"GeneralistOptimizer: the state holds {len(state.accumulators)} tensors, the "
                    f"gradients {len(grad_leaves)}: was it made by init() on these parameters?"
                )
            directions, accumulators = [], []
            for g, p, acc in zip(grad_leaves, treedef.flatten_up_to(params), state.accumulators):
                new_acc = F.update_accumulators(acc, g.astype(jnp.float32), decays)
                directions.append(
                    self._network_direction(g.astype(jnp.float32), p.astype(jnp.float32), new_acc, layers)
                )
                accumulators.append(new_acc)
            directions = [d.astype(g.dtype) for d, g in zip(self._finish(directions), grad_leaves)]
            return treedef.unflatten(directions), GeneralistState(tuple(accumulators))

        return optax.GradientTransformation(init, update)

    def transform(self, theta: dict[str, Any], *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
        """Assembled from optax pieces: clip, {learned rule on matrices | Adam elsewhere},
        decoupled weight decay, then −η(t) with η(t) = exp(θ_lr) · schedule."""

        def learning_rate(count):
            rate = jnp.exp(theta["log_learning_rate"]) * schedule_factor(
                count, num_steps, self.schedule, self.warmup_fraction, self.final_lr_fraction
            )
            if self.schedule_knots:
                rate = rate * learned_schedule(theta["schedule"], count, num_steps)
            return rate

        return optax.with_extra_args_support(
            optax.chain(
                optax.clip(GRADIENT_CLIP),
                optax.multi_transform(
                    {
                        LEARNED: self.scale_by_learned_rule(theta),
                        # eps_root: √(v + 1e-16) has a finite derivative where v = 0 (an embedding
                        # row no batch touched), so truncated backprop through the rule stays
                        # finite; equal to √v in float32 wherever v > 1e-9
                        OTHER: optax.scale_by_adam(self.adam_b1, self.adam_b2, self.adam_eps, eps_root=ADAM_EPS_ROOT),
                    },
                    self.labels,
                ),
                optax.add_decayed_weights(self.weight_decay),
                optax.scale_by_learning_rate(learning_rate),
            )
        )


@preset("generalist")
def generalist(**kwargs: Any) -> GeneralistOptimizer:
    """The Celo2-class generalist (hidden 8×2, Newton–Schulz on matrices, AdamW elsewhere)."""
    return GeneralistOptimizer(**kwargs)

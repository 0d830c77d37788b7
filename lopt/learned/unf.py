"""A permutation-equivariant learned optimizer in the line of Universal Neural Functionals (Zhou et
al. 2024): the per-parameter MLP optimizer (`lopt.learned.mlp`) whose hidden layers also see the
other units of the same layer and of the layers that share its units, through the network's
weight-space symmetries (`lopt.learned.symmetry`).

Every parameter's features go through the per-parameter MLP's first layer to c channels,
h_T ∈ R^{shape(T) × c} for each tensor T. Each later layer k computes, per tensor,

    z_T = h_T W_k + b_k                                        (the per-parameter path)
        + Σ_a  mean_a(h_T) P_k^{r(a)}                          (pooling along each permuted axis a)
        + mean_A(h_T) P_k^{all}                                (pooling along all permuted axes)
        + Σ_a  S_{G(a)} Q_k^{r(a)}   broadcast along a         (the units T shares with other tensors)

where a runs over T's axes that carry a permutation group G(a), r(a) is the axis's role ("out" for
a tensor's last axis, "in" for the others: a kernel's rows and columns see different weights) and
S_G ∈ R^{n_G × c} averages, over every axis of every tensor labelled G, that tensor's activations
pooled over its other axes: the summary of unit i of group G that every tensor indexing unit i
receives. Mean pooling and the shared summaries are the equivariant linear maps of Zhou et al.
(2023, 2024) restricted to one channel-mixing matrix per term and role, shared by all tensors, so
one set of weights serves every architecture. ReLU between layers, and the MLP optimizer's
output: Δp = −step_mult · d · exp(exp_mult · m).

Permuting a group's units consistently in every tensor that indexes them permutes every term the
same way (means along a permuted axis do not change, the summaries' rows move with the units), so
the update permutes as the weights did (`tests/test_unf.py` checks it on an MLP, a conv net and a
transformer). With P = Q = 0 — the equivariant weights start at zero — the kind is exactly the
per-parameter MLP with the same layers.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from lopt.learned import features as F
from lopt.learned import symmetry as S
from lopt.learned.base import preset, register
from lopt.learned.mlp import MLPOptimizer

ROLES = ("in", "out")
TERMS = ("pool_in", "pool_out", "pool_all", "share_in", "share_out")
SYMMETRIES = ("auto", "none")


def _dot(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.einsum("...c,cd->...d", x, w, precision=jax.lax.Precision.HIGHEST)


def _role(axis: int, ndim: int) -> str:
    return "out" if axis == ndim - 1 else "in"


def _summaries(hidden: list[jax.Array], labels: list[tuple]) -> dict[str, jax.Array]:
    """S_G [n_G, c] for every group: each labelled axis's activations pooled over the tensor's
    other axes, averaged over all the axes labelled G."""
    parts: dict[str, list[jax.Array]] = {}
    for h, axes in zip(hidden, labels):
        for a, label in enumerate(axes):
            if label is None:
                continue
            others = tuple(i for i in range(len(axes)) if i != a)
            parts.setdefault(label, []).append(jnp.mean(h, axis=others) if others else h)
    return {label: sum(p) / len(p) for label, p in parts.items()}


def equivariant_layer(
    hidden: list[jax.Array], labels: list[tuple], weights: jax.Array, bias: jax.Array, terms: dict[str, jax.Array]
) -> list[jax.Array]:
    """One layer of the network (module docstring) on every tensor's activations [*shape, c]."""
    shared = _summaries(hidden, labels)
    out = []
    for h, axes in zip(hidden, labels):
        z = _dot(h, weights) + bias
        permuted = [a for a, label in enumerate(axes) if label is not None]
        for a in permuted:
            role = _role(a, len(axes))
            z = z + _dot(jnp.mean(h, axis=a, keepdims=True), terms[f"pool_{role}"])
            summary = shared[axes[a]]
            shape = [1] * len(axes) + [summary.shape[-1]]
            shape[a] = summary.shape[0]
            z = z + _dot(summary.reshape(shape), terms[f"share_{role}"])
        if permuted:
            z = z + _dot(jnp.mean(h, axis=tuple(permuted), keepdims=True), terms["pool_all"])
        out.append(z)
    return out


@register
@dataclasses.dataclass(frozen=True)
class UNFOptimizer(MLPOptimizer):
    """The equivariant learned optimizer of the module docstring. Fields as `MLPOptimizer`'s (the
    per-parameter path is that optimizer's network), plus

    symmetry: 'auto' reads the parameter tree's permutation groups with
      `lopt.learned.symmetry.infer` (and warns, then treats nothing as permutable, on a tree it
      has no rule for); 'none' treats nothing as permutable, which makes this the per-parameter MLP.
    equivariant_init_scale: the starting scale of the P and Q matrices (0: the per-parameter MLP
      exactly at theta₀)."""

    kind: ClassVar[str] = "unf"
    hidden_sizes: tuple[int, ...] = (16, 16)
    symmetry: str = "auto"
    equivariant_init_scale: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.symmetry not in SYMMETRIES:
            raise ValueError(f"symmetry: unknown {self.symmetry!r}; valid: {', '.join(SYMMETRIES)}")
        if self.kernel not in ("auto", "xla"):
            raise ValueError(f"UNFOptimizer runs its network in XLA; kernel={self.kernel!r} is not available")
        if self.accumulators.factored_decays:
            raise ValueError("UNFOptimizer does not take factored accumulators (their statistics are per row)")

    def init_meta(self, key: jax.Array) -> dict[str, Any]:
        """theta: the per-parameter MLP's ('layers', 'decay_logits') and 'equivariant': for each
        layer after the first, one [c_in, c_out] matrix per term (`TERMS`)."""
        k_mlp, k_eq = jax.random.split(key)
        theta = super().init_meta(k_mlp)
        sizes = [*self.hidden_sizes, 2]
        equivariant = []
        for k, (fan_in, fan_out) in zip(jax.random.split(k_eq, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
            draws = jax.random.normal(k, (len(TERMS), fan_in, fan_out), jnp.float32)
            scale = self.equivariant_init_scale / jnp.sqrt(fan_in)
            equivariant.append({name: draws[i] * scale for i, name in enumerate(TERMS)})
        return {**theta, "equivariant": equivariant}

    def labels(self, params: Any) -> list[tuple]:
        """Each tensor's axis labels, in leaf order (module docstring of lopt.learned.symmetry)."""
        leaves, treedef = jax.tree.flatten(params)
        if self.symmetry == "auto":
            try:
                return treedef.flatten_up_to(S.infer(params))
            except S.UnknownStructure as error:
                warnings.warn(f"UNFOptimizer: {error}; treating no axis as permutable", stacklevel=3)
        return [(None,) * leaf.ndim for leaf in leaves]

    def network(self, theta: dict[str, Any], inputs: list[jax.Array], labels: list[tuple], scalars: jax.Array):
        """(direction, magnitude) per tensor from its stacked features [*shape, F]."""
        first, *rest = self.per_tensor_layers(theta, scalars)
        hidden = [jax.nn.relu(_dot(x, first[0]) + first[1]) for x in inputs]
        for k, ((weights, bias), terms) in enumerate(zip(rest, theta["equivariant"])):
            hidden = equivariant_layer(hidden, labels, weights, bias, terms)
            if k < len(rest) - 1:
                hidden = [jax.nn.relu(h) for h in hidden]
        return [(z[..., 0], z[..., 1]) for z in hidden]

    def tensor_steps(
        self,
        theta: dict[str, Any],
        scalars: jax.Array,
        tensors: list[tuple[jax.Array, jax.Array]],
        accumulators: list[F.ParamAccumulators],
        params: Any,
    ) -> list[jax.Array]:
        """The MLP optimizer's step formula with this kind's network (`network`) in place of the
        per-parameter one: the rest of `update` (accumulators, loss and progress features) is
        `MLPOptimizer`'s."""
        inputs = [
            jnp.stack(F.normalised_features(g32, p32, acc, kernel=False), axis=-1)
            for (g32, p32), acc in zip(tensors, accumulators)
        ]
        outputs = self.network(theta, inputs, self.labels(params), scalars)
        return [-self.step_mult * d * jnp.exp(self.exp_mult * m) for d, m in outputs]


@preset("unf")
def unf(hidden_sizes: tuple[int, ...] = (16, 16), **kwargs: Any) -> UNFOptimizer:
    """The per-parameter MLP's accumulators (momentum at 0.9/0.99/0.999, rms at 0.999), hidden
    16×2, equivariant terms from zero."""
    return UNFOptimizer(hidden_sizes=hidden_sizes, **kwargs)

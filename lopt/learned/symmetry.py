"""Which axes of a network's weights share a permutation symmetry: the weight-space description a
permutation-equivariant learned optimizer (`lopt.learned.unf`) is built from.

Hidden units can be permuted without changing the function a network computes, provided every
tensor that indexes those units is permuted the same way (Hecht-Nielsen 1990; Zhou et al. 2023,
"Permutation Equivariant Neural Functionals", and 2024, "Universal Neural Functionals", which
builds the equivariant layers from exactly this description). A *spec* gives each parameter
tensor a tuple of axis labels: a label names the permutation group of that axis (every axis with
the same label is permuted together), None an axis nothing permutes (the network's inputs and
outputs, conv kernels' spatial axes, vocabularies).

`infer(params)` reads the spec from the pytree of lopt's own model families (flax names):
- a chain of `Conv_i` then `Dense_i` layers (MLPs; conv nets, whose global pooling keeps the last
  conv's channels as the first dense layer's inputs): layer i's kernel maps group i−1 to group i,
  its bias is group i; the chain's input and output are fixed, and a link whose sizes disagree
  (a flatten) is fixed too;
- transformers (`Embed_0`, `positions`, `TransformerBlock_k`, `LayerNorm_0`, `Dense_0`): one
  group for the residual stream, shared across blocks by the embeddings, every layer norm, each
  block's attention input and output and MLP input and output, and the unembedding; per block a
  group for the MLP's hidden units, one for the heads, one for the query/key feature axis (the
  same permutation in every head, which keeps q·k) and one for the value feature axis.
Other trees get `UnknownStructure`, which names the first module it could not place; a caller may
then pass its own spec (the same tree of tuples).
"""

from __future__ import annotations

import re
from typing import Any

import jax

Label = str | None


class UnknownStructure(ValueError):
    """The parameter tree is not one whose permutation symmetries `infer` knows."""


def _index(name: str, kind: str) -> int | None:
    match = re.fullmatch(rf"{kind}_(\d+)", name)
    return int(match.group(1)) if match else None


def _chain(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The spec of a Conv_i / Dense_i chain (module docstring)."""
    layers = sorted((k for k in tree if _index(k, "Conv") is not None), key=lambda k: _index(k, "Conv"))
    layers += sorted((k for k in tree if _index(k, "Dense") is not None), key=lambda k: _index(k, "Dense"))
    unknown = [k for k in tree if k not in layers]
    if unknown or not layers:
        raise UnknownStructure(f"no permutation rule for {prefix}{(unknown or ['(empty)'])[0]!r}")
    spec: dict[str, Any] = {}
    previous: Label = None
    previous_size = None
    for i, name in enumerate(layers):
        layer = tree[name]
        if set(layer) != {"kernel", "bias"}:
            raise UnknownStructure(f"{prefix}{name}: expected 'kernel' and 'bias', got {sorted(layer)}")
        kernel = layer["kernel"].shape
        incoming = previous if kernel[-2] == previous_size else None
        out: Label = f"{prefix}{name}" if i < len(layers) - 1 else None
        spec[name] = {"kernel": (None,) * (len(kernel) - 2) + (incoming, out), "bias": (out,)}
        previous, previous_size = out, kernel[-1]
    return spec


def _transformer(tree: dict[str, Any]) -> dict[str, Any]:
    residual = "residual"
    spec: dict[str, Any] = {}
    for name, value in tree.items():
        if name == "Embed_0":
            spec[name] = {"embedding": (None, residual)}
        elif name == "positions":
            spec[name] = (None, residual)
        elif name.startswith("LayerNorm_"):
            spec[name] = {k: (residual,) for k in value}
        elif name == "Dense_0":
            spec[name] = {"kernel": (residual, None), "bias": (None,)}
        elif name.startswith("TransformerBlock_"):
            spec[name] = _block(value, name, residual)
        else:
            raise UnknownStructure(f"no permutation rule for transformer module {name!r}")
    return spec


def _block(block: dict[str, Any], name: str, residual: str) -> dict[str, Any]:
    hidden, heads, qk, v = (f"{name}/{part}" for part in ("mlp", "heads", "qk", "v"))
    spec: dict[str, Any] = {}
    for module, value in block.items():
        if module.startswith("LayerNorm_"):
            spec[module] = {k: (residual,) for k in value}
        elif module.startswith("Dense_"):
            # the MLP's first layer reads the residual stream, the second writes it (flax names
            # them in construction order, the outer one first, so the shapes decide)
            fan_in, fan_out = value["kernel"].shape
            stream = _residual_size(block)
            if (fan_in == stream) == (fan_out == stream):
                raise UnknownStructure(f"{name}/{module}: cannot tell the MLP's hidden axis from the residual stream")
            spec[module] = (
                {"kernel": (residual, hidden), "bias": (hidden,)}
                if fan_in == stream
                else {"kernel": (hidden, residual), "bias": (residual,)}
            )
        elif module.startswith("MultiHeadDotProductAttention_"):
            spec[module] = {
                "query": {"kernel": (residual, heads, qk), "bias": (heads, qk)},
                "key": {"kernel": (residual, heads, qk), "bias": (heads, qk)},
                "value": {"kernel": (residual, heads, v), "bias": (heads, v)},
                "out": {"kernel": (heads, v, residual), "bias": (residual,)},
            }
        else:
            raise UnknownStructure(f"no permutation rule for {name}/{module}")
    return spec


def _residual_size(block: dict[str, Any]) -> int:
    norms = [v for k, v in block.items() if k.startswith("LayerNorm_")]
    if not norms:
        raise UnknownStructure("a transformer block without a layer norm: its residual width is unknown")
    return next(iter(norms[0].values())).shape[0]


def infer(params: Any) -> Any:
    """The spec of `params` (module docstring): a tree like `params` with a tuple of labels per
    tensor. Raises UnknownStructure for trees it has no rule for."""
    if not isinstance(params, dict):
        raise UnknownStructure(f"expected a dict of flax modules, got {type(params).__name__}")
    if any(k.startswith("TransformerBlock_") for k in params):
        spec = _transformer(params)
    else:
        spec = _chain(params, "")
    check(params, spec)
    return spec


def check(params: Any, spec: Any) -> None:
    """That `spec` fits `params`: one label per axis, and every axis of a group the same size."""
    leaves, treedef = jax.tree.flatten(params)
    labels = treedef.flatten_up_to(spec)
    sizes: dict[str, int] = {}
    for leaf, axes in zip(leaves, labels):
        if not isinstance(axes, tuple) or len(axes) != leaf.ndim:
            raise UnknownStructure(f"a tensor of shape {leaf.shape} has axis labels {axes!r}")
        for size, label in zip(leaf.shape, axes):
            if label is not None and sizes.setdefault(label, size) != size:
                raise UnknownStructure(f"group {label!r} has axes of sizes {sizes[label]} and {size}")


def groups(spec: Any) -> list[str]:
    """The labels of `spec` in first-seen order."""
    seen: dict[str, None] = {}
    for axes in jax.tree.leaves(spec, is_leaf=lambda x: isinstance(x, tuple)):
        for label in axes:
            if label is not None:
                seen.setdefault(label, None)
    return list(seen)

"""lopt's trained optimizers in PyTorch (`pip install 'lopt[torch]'`).

    import lopt.torch
    opt = lopt.torch.load("small-mlp-pes-h100", model.parameters(), num_steps=5000)
    ...
    loss.backward(); opt.step(); opt.zero_grad()

`load` reads the same checkpoint folders as `lopt.load` (manifest JSON + orbax arrays, read once
as numpy) and returns a `torch.optim.Optimizer` that computes the rule in torch alone: no JAX
call and no copy to the host per step. Kinds with a torch version: `TORCH_KINDS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lopt.checkpoint import CheckpointError, load_meta, read_manifest, resolve
from lopt.torch.base import LearnedTorchOptimizer, TorchOptimizerError

TORCH_KINDS = ("mlp", "lr_controller", "generalist", "program")

__all__ = ["TORCH_KINDS", "LearnedTorchOptimizer", "TorchOptimizerError", "load"]


def load(path: str | Path, params: Iterable[Any], num_steps: int | None = None) -> LearnedTorchOptimizer:
    """A torch optimizer over `params` (tensors or param groups) from checkpoint `path` (a folder
    or a shipped name, as for `lopt.load`). num_steps: the training run's length (its progress
    features read step / num_steps); defaults to the length stored at save time."""
    folder = resolve(path)
    manifest = read_manifest(folder)
    kind = manifest["kind"]
    if kind not in TORCH_KINDS:
        raise TorchOptimizerError(
            f"{folder}: optimizers of kind {kind!r} have no torch version yet; torch versions exist for "
            f"{', '.join(TORCH_KINDS)}"
        )
    meta, theta = load_meta(folder)
    theta = jax.tree.map(np.asarray, theta)
    if num_steps is None:
        num_steps = manifest.get("num_steps")
        if num_steps is None and kind == "program":  # programs read no training progress
            num_steps = 1
        if num_steps is None:
            raise CheckpointError(f"{folder} stores no default num_steps: pass lopt.torch.load(..., num_steps=...)")
    if kind == "program":
        from lopt.torch.program import TorchProgram

        return TorchProgram(params, meta, theta, int(num_steps))
    if kind == "generalist":
        from lopt.torch.generalist import TorchGeneralist

        return TorchGeneralist(params, meta, theta, int(num_steps))
    if kind == "lr_controller":
        from lopt.torch.controller import TorchLRController

        return TorchLRController(params, meta, theta, int(num_steps))
    from lopt.torch.mlp import TorchMLPOptimizer

    return TorchMLPOptimizer(params, meta, theta, int(num_steps))

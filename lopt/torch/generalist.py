"""The generalist learned optimizer (`lopt.learned.GeneralistOptimizer`, Celo2-class) as a
`torch.optim.Optimizer`: gradient clipping at ±1000; on matrices the shared network's direction
from normalised features (plus Adam's with the nominal term), Newton–Schulz with Muon's
coefficients, unit RMS; AdamW (β = 0.9, 0.95) on everything else; decoupled weight decay; the
step −η(t) with η(t) = exp(θ_lr) · warm-up + decay · the learned schedule.

Which tensors take the learned rule follows the JAX rule: rank ≥ 2, the name not matching
`adam_paths` (embeddings) and not ending in "bias". Names come from `named_parameters()` (pass
them: `lopt.torch.load(name, model.named_parameters())`); without names every matrix takes the
learned rule."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from lopt import matrix
from lopt.learned import features as F
from lopt.learned.generalist import (
    ADAM_EPS_ROOT,
    GRADIENT_CLIP,
    MAX_SCHEDULE_LOG_MULTIPLIER,
    OUTPUT_EPS,
    GeneralistOptimizer,
)
from lopt.torch import features as T
from lopt.torch.base import LearnedTorchOptimizer, as_layers, bias_corrections, schedule_factor

NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def newton_schulz(x: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """lopt.learned.generalist.newton_schulz on torch tensors: `lopt.matrix.newton_schulz` (one
    definition for both libraries), iterated in `dtype`."""
    return matrix.newton_schulz(x, steps, cast=lambda y: y.to(dtype), norm=torch.linalg.norm).to(x.dtype)


def interp(x: torch.Tensor, points: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """np.interp of a scalar x in [points[0], points[-1]] over increasing `points`."""
    index = torch.clamp(torch.searchsorted(points, x.reshape(1), right=True) - 1, 0, len(points) - 2)[0]
    left, right = points[index], points[index + 1]
    weight = (x - left) / (right - left)
    return values[index] + weight * (values[index + 1] - values[index])


class TorchGeneralist(LearnedTorchOptimizer):
    """`meta` (a GeneralistOptimizer) with meta-parameters `theta` (numpy arrays, as saved)."""

    def __init__(self, params: Iterable[Any], meta: GeneralistOptimizer, theta: dict[str, Any], num_steps: int) -> None:
        super().__init__(params, num_steps)
        self.meta = meta
        device = self.param_groups[0]["params"][0].device
        self.layers = as_layers(theta["layers"], device)
        self.log_learning_rate = torch.tensor(np.float32(theta["log_learning_rate"]), device=device)
        self.knots = (
            torch.tensor(np.array(theta["schedule"], np.float32), device=device) if meta.schedule_knots else None
        )
        self.decays = {
            k: torch.tensor(np.asarray(v, np.float32), device=device)
            for k, v in F.initial_decays(meta.accumulators)._asdict().items()
        }
        self.learned = {}
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for name, p in zip(names, group["params"]):
                self.learned[p] = p.dim() >= 2 and (
                    name is None
                    or (not re.search(meta.adam_paths, name.replace(".", "/")) and name.rsplit(".", 1)[-1] != "bias")
                )

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        if self.learned[p]:
            return {"accumulators": T.init_accumulators(p, self.meta.accumulators)}
        zeros = lambda: torch.zeros(p.shape, dtype=torch.float32, device=p.device)  # noqa: E731
        return {"m": zeros(), "v": zeros()}

    def learning_rate(self, t: torch.Tensor) -> torch.Tensor:
        """η(t) at t = count + 1 (float32 tensor), as optax's schedule computes it."""
        rate = torch.exp(self.log_learning_rate) * schedule_factor(
            t, self.num_steps, self.meta.schedule, self.meta.warmup_fraction, self.meta.final_lr_fraction
        )
        if self.knots is not None:
            progress = torch.clamp(t / max(float(self.num_steps), 1.0), 0.0, 1.0)
            points = torch.linspace(0.0, 1.0, len(self.knots), dtype=torch.float32, device=t.device)
            limit = MAX_SCHEDULE_LOG_MULTIPLIER
            rate = rate * torch.exp(torch.clamp(interp(progress, points, self.knots), -limit, limit))
        return rate

    def _direction(self, g: torch.Tensor, p: torch.Tensor, acc: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        x = T.normalised(T.raw_features(g, p, acc))
        direction = T.network(x, self.layers)[0]
        if self.meta.nominal:
            direction = direction + x[self.meta.adam_feature]
        return direction.reshape(g.shape)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        closure_loss = self._closure(closure)
        meta = self.meta
        device = self.layers[0][0].device
        t = torch.tensor(float(self._count() + 1), dtype=torch.float32, device=device)
        eta = self.learning_rate(t)
        b1, b2 = meta.adam_b1, meta.adam_b2
        correction1, correction2 = bias_corrections(b1, b2, t)
        for p, g in self._parameters_with_grads():
            state = self._state(p)
            g32 = g.to(torch.float32).clamp(-GRADIENT_CLIP, GRADIENT_CLIP)
            p32 = p.to(torch.float32)
            if self.learned[p]:
                T.update_accumulators(state["accumulators"], g32, self.decays)
                d = self._direction(g32, p32, state["accumulators"])
                if meta.orthogonalize:
                    d = newton_schulz(d.reshape(-1, d.shape[-1]), meta.ns_steps, NS_DTYPES[meta.ns_dtype]).reshape(
                        d.shape
                    )
                d = d * torch.rsqrt(torch.mean(d * d) + OUTPUT_EPS)
            else:
                state["m"].mul_(b1).add_((1 - b1) * g32)
                state["v"].mul_(b2).add_((1 - b2) * g32 * g32)
                d = (state["m"] / correction1) / (torch.sqrt(state["v"] / correction2 + ADAM_EPS_ROOT) + meta.adam_eps)
            if meta.weight_decay:
                d = d + meta.weight_decay * p32
            p.add_((-eta * d).to(p.dtype))
        self._advance()
        return closure_loss

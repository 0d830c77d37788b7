"""What every lopt optimizer in torch shares: parameter checks, the global step count (in the
param groups, so `state_dict` carries it), lazily created per-parameter state, `step(closure)`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def as_layers(theta_layers: list[dict[str, Any]], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A saved network's [{'w', 'b'}, ...] (numpy) as float32 (weight, bias) tensors on `device`."""
    return [
        (
            torch.tensor(np.array(layer["w"], np.float32), device=device),
            torch.tensor(np.array(layer["b"], np.float32), device=device),
        )
        for layer in theta_layers
    ]


def bias_corrections(b1: float, b2: float, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 − β^t in float32 for a float32 step tensor t, as optax and lopt.hypergrad.online compute
    it (a float64 power rounds differently, and a hypergradient rule amplifies the difference)."""
    beta = lambda b: torch.tensor(b, dtype=torch.float32, device=t.device)  # noqa: E731
    return 1.0 - beta(b1) ** t, 1.0 - beta(b2) ** t


class TorchOptimizerError(ValueError):
    """Input a torch lopt optimizer cannot use (a dtype, a sparse gradient, a missing loss)."""


class LearnedTorchOptimizer(torch.optim.Optimizer):
    """Base of the torch ports. Subclasses implement `_init_state(p)` and `step`, calling
    `_count()` for the current step, `_parameters_with_grads()` and `_advance()` at the end."""

    def __init__(self, params: Iterable[Any], num_steps: int) -> None:
        super().__init__(params, {"count": 0})
        if not isinstance(num_steps, int) or num_steps <= 0:
            raise TorchOptimizerError(f"num_steps must be a positive whole number, got {num_steps!r}")
        self.num_steps = num_steps
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype not in SUPPORTED_DTYPES:
                    raise TorchOptimizerError(
                        f"lopt's torch optimizers take float32 or bfloat16 parameters, got one of dtype {p.dtype} "
                        f"and shape {tuple(p.shape)}"
                    )

    def _closure(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _count(self) -> int:
        return int(self.param_groups[0]["count"])

    def _advance(self) -> None:
        for group in self.param_groups:
            group["count"] = int(group["count"]) + 1

    def _parameters_with_grads(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TorchOptimizerError(
                        f"sparse gradients are not supported (parameter of shape {tuple(p.shape)}); "
                        "use a dense embedding gradient (sparse=False)"
                    )
                yield p, p.grad

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state.update(self._init_state(p))
        return state

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, then each parameter's state again as saved: torch casts loaded state to
        the parameter's dtype, which would round the float32 accumulators of bfloat16
        parameters; here they keep their dtype and only move to the parameter's device."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            p = params[int(index)]
            self.state[p] = _copy_to(saved, p.device)


def _copy_to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone().to(device)
    if isinstance(value, dict):
        return {k: _copy_to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_to(v, device) for v in value)
    return value


def schedule_factor(
    t: torch.Tensor, num_steps: int, kind: str, warmup_fraction: float, final_fraction: float
) -> torch.Tensor:
    """η(t)/η at step t = count + 1 (a float32 tensor), as lopt.learned.generalist.schedule_factor
    computes it in float32: linear warm-up over `warmup_fraction` of the run, then `kind` decay
    ('cosine', 'linear' or 'constant') to `final_fraction`. Torch ops throughout, so torch.compile
    traces the step count instead of baking it in."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32, device=t.device)  # noqa: E731
    total = torch.clamp(f32(float(num_steps)), min=1.0)
    warmup = torch.clamp(f32(warmup_fraction) * total, min=1.0)
    ramp = torch.clamp(t / warmup, max=1.0)
    progress = torch.clamp((t - warmup) / torch.clamp(total - warmup, min=1.0), 0.0, 1.0)
    final = f32(final_fraction)
    if kind == "cosine":
        decay = final + (1.0 - final) * 0.5 * (1.0 + torch.cos(math.pi * progress))
    elif kind == "linear":
        decay = final + (1.0 - final) * (1.0 - progress)
    else:
        decay = torch.ones_like(progress)
    return ramp * decay

"""The per-parameter MLP learned optimizer (`lopt.learned.MLPOptimizer`: small_mlp,
factored_mlp) as a `torch.optim.Optimizer`: the same accumulators, features, network and step
Δp = −step_mult · d · exp(exp_mult · m), computed in torch alone."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from lopt.learned import features as F
from lopt.learned.mlp import MLPOptimizer
from lopt.torch import features as T
from lopt.torch.base import LearnedTorchOptimizer, TorchOptimizerError, as_layers


class TorchMLPOptimizer(LearnedTorchOptimizer):
    """`meta` (an MLPOptimizer) with meta-parameters `theta` (numpy arrays, as saved)."""

    def __init__(self, params: Iterable[Any], meta: MLPOptimizer, theta: dict[str, Any], num_steps: int) -> None:
        super().__init__(params, num_steps)
        self.meta = meta
        device = self.param_groups[0]["params"][0].device
        as_tensor = lambda a: torch.tensor(np.array(a, np.float32), device=device)  # noqa: E731
        self.layers = as_layers(theta["layers"], device)
        initial = F.initial_decays(meta.accumulators)._asdict()
        logits = theta.get("decay_logits", {})
        self.decays = {}
        for name, values in initial.items():
            if meta.learn_decays and name in logits:
                self.decays[name] = torch.sigmoid(as_tensor(logits[name]))
            else:
                self.decays[name] = as_tensor(values)
        self.loss_state = (
            {
                "ema": torch.zeros(len(F.LOSS_DECAYS), device=device),
                "minimum": torch.zeros((), device=device),
                "seen": torch.zeros((), dtype=torch.bool, device=device),
            }
            if meta.use_loss_features
            else None
        )

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        return {"accumulators": T.init_accumulators(p, self.meta.accumulators)}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        """One update of every parameter with a gradient; `loss` (or the closure's) feeds the
        loss features of optimizers meta-trained with them."""
        closure_loss = self._closure(closure)
        loss = closure_loss if loss is None else loss
        count = self._count()
        device = self.layers[0][0].device
        scalars = [T.time_features(count, self.num_steps, device)]
        if self.loss_state is not None:
            if loss is None:
                raise TorchOptimizerError("this optimizer uses loss features: call step(closure) or step(loss=loss)")
            loss = torch.as_tensor(loss, device=device)
            T.update_loss_state(self.loss_state, loss)
            scalars.append(T.loss_features(self.loss_state, loss))
        scalars = torch.cat(scalars)
        (w0, b0), *rest = self.layers
        k = self.meta.accumulators.num_features
        layers = [(w0[:k], b0 + scalars @ w0[k:]), *rest]
        for p, g in self._parameters_with_grads():
            state = self._state(p)
            g32, p32 = g.to(torch.float32), p.to(torch.float32)
            T.update_accumulators(state["accumulators"], g32, self.decays)
            x = T.network(T.normalised(T.raw_features(g32, p32, state["accumulators"])), layers)
            update = -self.meta.step_mult * x[0] * torch.exp(self.meta.exp_mult * x[1])
            p.add_(update.reshape(p.shape).to(p.dtype))
        self._advance()
        return closure_loss

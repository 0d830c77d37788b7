"""The meta-learned LR controller (`lopt.learned.LRController`) as a `torch.optim.Optimizer`:
a network reads progress, loss and hypergradient-signal features each step and sets a log-LR
multiplier on a hand-designed base rule at unit learning rate. Bases with a torch version: Adam
and Adam with its log learning rate trained online by Adam on the hypergradient
(`adam_hd_log_adam`, lopt.hypergrad.online's mode "log_adam" along a decaying tangent)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from lopt.hypergrad import online
from lopt.learned import controller as C
from lopt.learned import features as F
from lopt.torch import features as T
from lopt.torch.base import LearnedTorchOptimizer, TorchOptimizerError, as_layers, bias_corrections

ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}  # lopt.baselines' "adam" and the HD rule's inner Adam
HD = {"hyper_lr": 0.1, "tangent_decay": 0.99}  # lopt.baselines' "adam_hd_log_adam"
BASES = ("adam", "adam_hd_log_adam")


class TorchLRController(LearnedTorchOptimizer):
    """`meta` (an LRController) with network weights `theta` (numpy arrays, as saved)."""

    def __init__(self, params: Iterable[Any], meta: C.LRController, theta: dict[str, Any], num_steps: int) -> None:
        if meta.base not in BASES:
            raise TorchOptimizerError(
                f"LR controllers on base {meta.base!r} have no torch version yet; torch bases: {', '.join(BASES)}"
            )
        super().__init__(params, num_steps)
        self.meta = meta
        device = self.param_groups[0]["params"][0].device
        self.layers = as_layers(theta["layers"], device)

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        zeros = lambda: torch.zeros(p.shape, dtype=torch.float32, device=p.device)  # noqa: E731
        state = {"m": zeros(), "v": zeros(), "previous_update": zeros()}
        if self.meta.base == "adam_hd_log_adam":
            state["tangent"] = zeros()
        return state

    def _shared(self) -> dict[str, torch.Tensor]:
        """The controller's scalars, kept in the first parameter's state (so state_dict has them)."""
        state = self._state(self.param_groups[0]["params"][0])
        if "shared" not in state:
            device = self.layers[0][0].device
            zeros = lambda *shape: torch.zeros(shape, dtype=torch.float32, device=device)  # noqa: E731
            state["shared"] = {
                "cosine_ema": zeros(len(C.SIGNAL_DECAYS)),
                "grad_norm_ema": zeros(len(C.SIGNAL_DECAYS)),
                "log_multiplier": zeros(),
                "learning_rate": torch.full((), self.meta.base_learning_rate, device=device),
                "hd_rate": zeros(),
                "hd_moments": zeros(2),
                "ema": zeros(len(F.LOSS_DECAYS)),
                "minimum": zeros(),
                "seen": torch.zeros((), dtype=torch.bool, device=device),
            }
        return state["shared"]

    def _log_multiplier(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, (w, b) = self.layers
        for hw, hb in hidden:
            x = torch.relu(x @ hw + hb)
        s_max = self.meta.max_log_multiplier
        return s_max * torch.tanh((x @ w + b)[0] / s_max)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        closure_loss = self._closure(closure)
        loss = closure_loss if loss is None else loss
        count = self._count()
        shared = self._shared()
        device = self.layers[0][0].device
        pairs = [(p, g.to(torch.float32), self._state(p)) for p, g in self._parameters_with_grads()]
        parts = [T.time_features(count, self.num_steps, device)]
        if self.meta.use_loss_features:
            if loss is None:
                raise TorchOptimizerError(
                    "this LR controller uses loss features: call step(closure) or step(loss=loss)"
                )
            loss = torch.as_tensor(loss, device=device)
            T.update_loss_state(shared, loss)
            parts.append(T.loss_features(shared, loss))
        dot = sum(torch.sum(g * s["previous_update"]) for _, g, s in pairs)
        g_norm = torch.sqrt(sum(torch.sum(g * g) for _, g, _ in pairs))
        u_norm = torch.sqrt(sum(torch.sum(s["previous_update"] ** 2) for _, _, s in pairs))
        cosine = -dot / (g_norm * u_norm + 1e-30)
        decays = torch.tensor(C.SIGNAL_DECAYS, dtype=torch.float32, device=device)
        cosine_ema = decays * shared["cosine_ema"] + (1 - decays) * cosine
        norm_ema = g_norm.expand(2) if count == 0 else decays * shared["grad_norm_ema"] + (1 - decays) * g_norm
        norm_ratio = torch.log((g_norm + 1e-30) / (norm_ema + 1e-30))
        signal = torch.stack(
            [cosine, *cosine_ema, *norm_ratio, shared["log_multiplier"] / self.meta.max_log_multiplier]
        )
        parts.append(signal)
        s = self._log_multiplier(torch.clamp(torch.cat(parts), -C.FEATURE_CLIP, C.FEATURE_CLIP))
        learning_rate = self.meta.base_learning_rate * torch.exp(s)
        directions = self._adam_directions(pairs, count)
        if self.meta.base == "adam_hd_log_adam":
            alpha = self._hd_rate(pairs, count, shared)
        else:
            alpha = torch.ones((), device=device)
        for (p, _, state), d in zip(pairs, directions):
            unit = -alpha * d
            p.add_((learning_rate * unit).to(p.dtype))
            state["previous_update"].copy_(unit)
            if "tangent" in state:
                state["tangent"].mul_(HD["tangent_decay"]).add_(d)
        shared["cosine_ema"].copy_(cosine_ema)
        shared["grad_norm_ema"].copy_(norm_ema)
        shared["log_multiplier"].copy_(s)
        shared["learning_rate"].copy_(learning_rate)
        self._advance()
        return closure_loss

    def _step_tensor(self, count: int) -> torch.Tensor:
        return torch.tensor(float(count + 1), dtype=torch.float32, device=self.layers[0][0].device)

    def _adam_directions(self, pairs, count: int) -> list[torch.Tensor]:
        """optax.scale_by_adam's m̂ / (√v̂ + ε), with its bias corrections at step count + 1."""
        b1, b2, eps = ADAM["b1"], ADAM["b2"], ADAM["eps"]
        correction1, correction2 = bias_corrections(b1, b2, self._step_tensor(count))
        out = []
        for _, g, state in pairs:
            state["m"].mul_(b1).add_((1 - b1) * g)
            state["v"].mul_(b2).add_((1 - b2) * g * g)
            out.append((state["m"] / correction1) / (torch.sqrt(state["v"] / correction2) + eps))
        return out

    def _hd_rate(self, pairs, count: int, shared: dict[str, torch.Tensor]) -> torch.Tensor:
        """α_t of the log_adam hypergradient rule at α_0 = 1 (the base built at unit LR): Adam on
        u_t = <g_t, Z_{t−1}> moves ρ by β·m̂/√v̂; α = exp(ρ)."""
        dot = sum(torch.sum(g * state["tangent"]) for _, g, state in pairs)
        b1, b2 = online.HYPER_B1, online.HYPER_B2
        first = b1 * shared["hd_moments"][0] + (1 - b1) * dot
        second = b2 * shared["hd_moments"][1] + (1 - b2) * dot * dot
        correction1, correction2 = bias_corrections(b1, b2, self._step_tensor(count))
        step = (first / correction1) / (torch.sqrt(second / correction2) + online.HYPER_EPS)
        shared["hd_rate"].add_(HD["hyper_lr"] * step)
        shared["hd_moments"].copy_(torch.stack([first, second]))
        return torch.exp(shared["hd_rate"])

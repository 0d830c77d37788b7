"""Found optimizer programs (`lopt.programs.ProgramOptimizer`) as a `torch.optim.Optimizer`: the
program's graph (parsed and checked by lopt's own parser, never evaluated as Python) run on torch
tensors with the library's semantics (lopt.programs.library: log and sqrt on |x|, interp(x, y, a)
= (1 − a)x + ay, scalars broadcast against tensors, tree-level norms over all parameters; matrix
functions read torch's weight layout, `apply_matrix_torch`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from lopt.programs.analysis import GRAPH_INPUTS, STATE_INDEX, check
from lopt.programs.interpret import TreeOps, apply_tree, substitute_constants
from lopt.programs.library import FUNCTIONS, apply_matrix
from lopt.programs.optimizer import ProgramOptimizer
from lopt.programs.optimizer import WARMUP_FRACTION
from lopt.torch.base import LearnedTorchOptimizer, schedule_factor


def _cbrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.abs(x).pow(1.0 / 3.0)


UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs,
    "cos": torch.cos,
    "sin": torch.sin,
    "tan": torch.tan,
    "arcsin": torch.asin,
    "arccos": torch.acos,
    "arctan": torch.atan,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tanh": torch.tanh,
    "arcsinh": torch.asinh,
    "arccosh": torch.acosh,
    "arctanh": torch.atanh,
    "exp": torch.exp,
    "exp2": torch.exp2,
    "exp10": lambda x: torch.pow(torch.tensor(10.0, dtype=x.dtype, device=x.device), x),
    "expm1": torch.expm1,
    "log": lambda x: torch.log(torch.abs(x)),
    "log10": lambda x: torch.log10(torch.abs(x)),
    "log2": lambda x: torch.log2(torch.abs(x)),
    "log1p": torch.log1p,
    "square": torch.square,
    "sqrt": lambda x: torch.sqrt(torch.abs(x)),
    "cube": lambda x: x * x * x,
    "cbrt": _cbrt,
    "sign": torch.sign,
    "reciprocal": lambda x: 1.0 / x,
    "negative": torch.negative,
}
BINARY: dict[str, Callable[..., torch.Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "max": torch.maximum,
    "min": torch.minimum,
    "power": torch.pow,
    "interp": lambda x, y, a: (1.0 - a) * x + a * y,
    "clip": lambda x, c: torch.clamp(x, -torch.abs(c), torch.abs(c)),
}


def apply_matrix_torch(name: str, x: torch.Tensor) -> torch.Tensor:
    """Matrix function `name` on a torch tensor in torch's layout: a weight of rank ≥ 2 is
    [out, in, ...] (nn.Linear, nn.Conv*), read as [fan_in, fan_out] = x.reshape(out, −1)ᵀ;
    vectors and scalars as in JAX (`lopt.programs.library.apply_matrix`). A JAX kernel [..., in,
    out] and its torch transpose [out, in, ...] so get the same update, transposed (rows in
    another order, which no matrix function can tell). Embedding tables, [num, dim] in both
    libraries, are read the other way round here."""
    if x.dim() < 2:
        return apply_matrix(name, x, lambda y, shape: y.expand(shape))
    view = x.reshape(x.shape[0], -1).T
    return FUNCTIONS[name].fn(view).expand(view.shape).T.reshape(x.shape)


TORCH_OPS = TreeOps(
    lambda name: {**UNARY, **BINARY}[name],
    torch.sum,
    torch.sqrt,
    torch.abs,
    lambda x: torch.clamp(x, max=1.0),
    lambda x, shape: x.expand(shape),
    apply_matrix_torch,
)


class TorchProgram(LearnedTorchOptimizer):
    """`meta` (a ProgramOptimizer) with theta (its `lr` input, and its constants when tuned)."""

    def __init__(self, params: Iterable[Any], meta: ProgramOptimizer, theta: dict[str, Any], num_steps: int) -> None:
        super().__init__(params, max(int(num_steps), 1))
        graph = check(meta.program)
        if "constants" in theta:
            graph = substitute_constants(graph, [float(c) for c in np.asarray(theta["constants"], np.float32)])
        self.graph = graph
        self.learning_rate = float(np.float32(theta["learning_rate"]))
        self.schedule = meta.schedule
        read = {a for _, args in graph.nodes for a in args if isinstance(a, int)} | {graph.outputs[0]}
        self.stored = {
            s: STATE_INDEX[s] in read or graph.outputs[1 + i] != STATE_INDEX[s] for i, s in enumerate(("m", "v"))
        }

    def _rate(self, rate: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The `lr` input at step t: the program's schedule (`lopt.programs.optimizer.lr_schedule`)."""
        if self.schedule == "constant":
            return rate
        return rate * schedule_factor(t, self.num_steps, self.schedule, WARMUP_FRACTION, 0.0)

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        return {s: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for s in ("m", "v") if self.stored[s]}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        closure_loss = self._closure(closure)
        pairs = list(self._parameters_with_grads())
        if pairs:
            device = pairs[0][0].device
            scalar = lambda x: torch.tensor(x, dtype=torch.float32, device=device)  # noqa: E731
            states = [self._state(p) for p, _ in pairs]
            inputs = {
                "w": [p.to(torch.float32) for p, _ in pairs],
                "g": [g.to(torch.float32) for _, g in pairs],
                "m": [s["m"] for s in states] if self.stored["m"] else scalar(0.0),
                "v": [s["v"] for s in states] if self.stored["v"] else scalar(0.0),
                "t": scalar(float(self._count() + 1)),
            }
            inputs["lr"] = self._rate(scalar(self.learning_rate), inputs["t"])
            values = [inputs[name] for name in GRAPH_INPUTS]
            for op, args in self.graph.nodes:
                args_ = [values[a] if isinstance(a, int) else scalar(a.value) for a in args]
                values.append(apply_tree(op, args_, TORCH_OPS))
            update, m, v = (values[o] for o in self.graph.outputs)
            for i, ((p, _), state) in enumerate(zip(pairs, states)):
                pick = lambda x: (x[i] if isinstance(x, list) else x).expand(p.shape)  # noqa: E731, B023
                new = {"m": pick(m), "v": pick(v)}
                for name in state:
                    state[name] = new[name].clone()
                p.sub_(pick(update).to(p.dtype))
        self._advance()
        return closure_loss

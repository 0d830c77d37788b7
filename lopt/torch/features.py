"""lopt.learned.features in torch: the same accumulators, per-parameter features and scalar
(progress, loss) features, term for term, so a checkpoint's network sees the inputs it was
meta-trained on. Constants come from the JAX module (one source of truth)."""

from __future__ import annotations

import torch

from lopt.learned import features as F


def ema(old: torch.Tensor, new: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    return decay * old + (1.0 - decay) * new


def init_accumulators(p: torch.Tensor, config: F.AccumulatorConfig) -> dict[str, list[torch.Tensor]]:
    """Zero float32 accumulators of one tensor: momenta, second moments, and the factored
    statistics (row, column) of rank ≥ 2 tensors or the full one ([p.shape], empty) below."""
    zeros = lambda shape: torch.zeros(shape, dtype=torch.float32, device=p.device)  # noqa: E731
    factored_rows, factored_cols = [], []
    for _ in config.factored_decays:
        if p.dim() >= 2:
            factored_rows.append(zeros(p.shape[:-1]))
            factored_cols.append(zeros(p.shape[:-2] + p.shape[-1:]))
        else:
            factored_rows.append(zeros(p.shape))
            factored_cols.append(zeros((0,)))
    return {
        "momentum": [zeros(p.shape) for _ in config.momentum_decays],
        "rms": [zeros(p.shape) for _ in config.rms_decays],
        "factored_row": factored_rows,
        "factored_col": factored_cols,
    }


def update_accumulators(acc: dict[str, list[torch.Tensor]], g: torch.Tensor, decays: dict[str, torch.Tensor]) -> None:
    """One step of every accumulator of one tensor, in place (float32 gradient `g`)."""
    g2 = g * g
    for i, m in enumerate(acc["momentum"]):
        m.copy_(ema(m, g, decays["momentum"][i]))
    for i, v in enumerate(acc["rms"]):
        v.copy_(ema(v, g2, decays["rms"][i]))
    for i, (row, col) in enumerate(zip(acc["factored_row"], acc["factored_col"])):
        d = decays["factored"][i]
        g2e = g2 + F.FACTORED_EPS
        if g.dim() >= 2:
            row.copy_(ema(row, g2e.mean(dim=-1), d))
            col.copy_(ema(col, g2e.mean(dim=-2), d))
        else:
            row.copy_(ema(row, g2e, d))


def factored_rsqrt(row: torch.Tensor, col: torch.Tensor, ndim: int) -> torch.Tensor:
    """rsqrt(v̂), v̂ = R Cᵀ / mean(R) (Adafactor), broadcast to the tensor."""
    if ndim >= 2:
        row_factor = torch.rsqrt(row / row.mean(dim=-1, keepdim=True) + F.RSQRT_EPS)
        return row_factor[..., :, None] * torch.rsqrt(col + F.RSQRT_EPS)[..., None, :]
    return torch.rsqrt(row + F.RSQRT_EPS)


def raw_features(g: torch.Tensor, p: torch.Tensor, acc: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
    """g, clip(g), p, momenta, g·rsqrt(v), m·rsqrt(v_0), rsqrt(v_0), g·rsqrt(v̂), m_0·rsqrt(v̂)."""
    momentum = acc["momentum"]
    features = [g, g.clamp(-F.CLIP_GRADIENT, F.CLIP_GRADIENT), p, *momentum]
    rsqrt_v = [torch.rsqrt(v + F.RSQRT_EPS) for v in acc["rms"]]
    features += [g * r for r in rsqrt_v]
    if rsqrt_v:
        features += [m * rsqrt_v[0] for m in momentum] + [rsqrt_v[0]]
    pre = [factored_rsqrt(r, c, g.dim()) for r, c in zip(acc["factored_row"], acc["factored_col"])]
    features += [g * f for f in pre] + [momentum[0] * f for f in pre]
    return features


def normalised(features: list[torch.Tensor]) -> torch.Tensor:
    """[K, n] the features stacked, each divided by its root-mean-square over the tensor."""
    x = torch.stack([f.reshape(-1) for f in features])
    return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + F.NORMALISER_EPS)


def network(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The shared per-parameter ReLU MLP on feature-major inputs [K, n] -> outputs [O, n]
    (lopt.learned.per_param_mlp.reference)."""
    for i, (w, b) in enumerate(layers):
        x = w.T @ x + b[:, None]
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


def time_features(step: int, num_steps: int, device: torch.device) -> torch.Tensor:
    """[15] tanh(t/τ − 1) at 11 timescales and tanh(s·t/T) at 4 scales."""
    t = torch.tensor(float(step), dtype=torch.float32, device=device)
    fraction = t / max(float(num_steps), 1.0)
    absolute = torch.tanh(t / torch.tensor(F.TIME_SCALES, dtype=torch.float32, device=device) - 1.0)
    relative = torch.tanh(torch.tensor(F.PROGRESS_SCALES, dtype=torch.float32, device=device) * fraction)
    return torch.cat([absolute, relative])


def update_loss_state(state: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
    """Fold a minibatch loss into the loss EMAs and running minimum, in place."""
    loss = loss.detach().to(torch.float32).reshape(())
    decays = torch.tensor(F.LOSS_DECAYS, dtype=torch.float32, device=loss.device)
    seen = state["seen"]
    state["ema"].copy_(torch.where(seen, decays * state["ema"] + (1.0 - decays) * loss, loss))
    state["minimum"].copy_(torch.where(seen, torch.minimum(state["minimum"], loss), loss))
    seen.fill_(True)


def loss_features(state: dict[str, torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
    loss = loss.detach().to(torch.float32).reshape(())
    scale = state["minimum"].abs() + 1e-8
    excess = torch.log1p(torch.clamp(state["ema"] - state["minimum"], min=0.0) / scale)
    deviation = torch.tanh((loss - state["ema"]) / (state["ema"].abs() + 1e-8))
    return torch.cat([excess, deviation])

"""A plain PyTorch training loop with lopt's shipped optimizers beside AdamW (README, "PyTorch").

A small conv net on scikit-learn digits (embedded in lopt; 8×8 images, 1,438 training and 359
test images), 400 steps of batch 64, 3 seeds each:

    python examples/torch_digits.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import lopt.torch
from lopt.tasks.datasets import digits

STEPS, BATCH = 400, 64


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def run(make_optimizer, seed: int) -> tuple[float, float]:
    data = digits()
    x = torch.tensor(np.asarray(data.train_x)).permute(0, 3, 1, 2)
    y = torch.tensor(np.asarray(data.train_y), dtype=torch.long)
    test_x = torch.tensor(np.asarray(data.test_x)).permute(0, 3, 1, 2)
    test_y = torch.tensor(np.asarray(data.test_y), dtype=torch.long)
    torch.manual_seed(seed)
    net = model()
    opt = make_optimizer(net.parameters())
    order = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        batch = torch.randint(0, len(x), (BATCH,), generator=order)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        return (float(nn.functional.cross_entropy(net(x), y)), float(nn.functional.cross_entropy(net(test_x), test_y)))


def main() -> None:
    optimizers = {
        "AdamW 1e-3": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "AdamW 3e-3": lambda p: torch.optim.AdamW(p, lr=3e-3),
        "lopt small-mlp-pes-h100": lambda p: lopt.torch.load("small-mlp-pes-h100", p, num_steps=STEPS),
        "lopt lr-controller-pes-h100": lambda p: lopt.torch.load("lr-controller-pes-h100", p, num_steps=STEPS),
        "lopt lr-controller-robust": lambda p: lopt.torch.load("lr-controller-robust", p, num_steps=STEPS),
    }
    print(f"digits conv net, {STEPS} steps of batch {BATCH}, 3 seeds (cross-entropy, mean ± sd)")
    print("| optimizer | train loss | test loss |")
    print("|---|---:|---:|")
    for name, make in optimizers.items():
        train, test = np.array([run(make, seed) for seed in range(3)]).T
        print(f"| {name} | {train.mean():.4f} ± {train.std():.4f} | {test.mean():.4f} ± {test.std():.4f} |", flush=True)


if __name__ == "__main__":
    main()

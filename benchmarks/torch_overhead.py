"""lopt.torch step time and optimizer-state memory against torch.optim.AdamW, in one process
(issue: the generalist in torch at ≤ 3× fused AdamW at 124M on an H100).

Parameters are float32 tensors of the shapes of benchmarks/lopt_overhead.py (1M: 4 × 512×512;
10M: 4 × 1024×2560; 124M: GPT-2 small, named so the generalist gives the embeddings to AdamW);
gradients are fixed random tensors. One timed step is `opt.step()` (with `loss=1.0` for the
optimizers that read it); each optimizer takes `--warmup` steps, then the median of `--steps`,
synchronised on CUDA. AdamW is `fused=True` on CUDA and `foreach=True` elsewhere.

    python benchmarks/torch_overhead.py --sizes 1M,10M
    python benchmarks/torch_overhead.py --sizes 1M,10M,124M --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lopt_overhead import parameter_shapes

import lopt.torch

SHIPPED = ("generalist", "small-mlp-pes-h100", "lr-controller-pes-h100", "program-search-h200")


def make_params(size: str, device: str) -> list[tuple[str, torch.nn.Parameter]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for name, shape in parameter_shapes(size).items():
        p = torch.nn.Parameter((0.02 * torch.randn(shape, generator=generator)).to(device))
        p.grad = (1e-3 * torch.randn(shape, generator=generator)).to(device)
        out.append((name.replace("_", "."), p))
    return out


def state_bytes(opt: torch.optim.Optimizer) -> int:
    def size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        return 0

    return sum(size(s) for s in opt.state.values())


def time_steps(opt: torch.optim.Optimizer, steps: int, warmup: int, device: str, reads_loss: bool) -> float:
    def one() -> None:
        if reads_loss:
            opt.step(loss=torch.tensor(1.0, device=device))
        else:
            opt.step()

    for _ in range(warmup):
        one()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--optimizers", default=",".join(SHIPPED))
    args = parser.parse_args()
    device = args.device
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    kind = "fused" if device == "cuda" else "foreach"
    print(f"lopt.torch step time ÷ AdamW ({kind}), torch {torch.__version__}, {name}")
    print("| size | optimizer | ms / step | ÷ AdamW | state MiB | ÷ AdamW state |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        named = make_params(size, device)
        params = [p for _, p in named]
        kwargs = {"fused": True} if device == "cuda" else {"foreach": True}
        adamw = torch.optim.AdamW(params, lr=1e-3, **kwargs)
        base = time_steps(adamw, args.steps, args.warmup, device, reads_loss=False)
        base_state = state_bytes(adamw)
        print(f"| {size} | AdamW | {1e3 * base:.2f} | 1.00 | {base_state / 2**20:.1f} | 1.00 |", flush=True)
        del adamw
        for shipped in args.optimizers.split(","):
            opt = lopt.torch.load(shipped, named, num_steps=10_000)
            reads_loss = shipped.startswith("lr-controller")
            seconds = time_steps(opt, args.steps, args.warmup, device, reads_loss)
            memory = state_bytes(opt)
            print(
                f"| {size} | {shipped} | {1e3 * seconds:.2f} | {seconds / base:.2f} | {memory / 2**20:.1f} | "
                f"{memory / max(base_state, 1):.2f} |",
                flush=True,
            )
            del opt


if __name__ == "__main__":
    main()

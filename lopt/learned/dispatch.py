"""Where each tensor's per-parameter work runs: fused XLA, the Pallas kernels of
`lopt.learned.kernels` (GPUs) or the CPU kernel of `lopt.learned.native`. Every learned kind
asks here, so the choice and its one size threshold live in one place.

Reasons for the rules (their measurements: docs/benchmarks.md, W1 and the measurements behind the code):
- Kernels pay off only on GPUs and only for large tensors: below KERNEL_MIN_SIZE elements a
  launch costs more than the pass it replaces, and a GPT-2 has ~100 small bias and norm vectors.
- The per-parameter MLP kernels (`network_pass`) help networks wider than 16 units (the fused
  elementwise form's traced program grows with the width²); narrower ones fuse well in XLA.
- On CPUs a wide per-parameter MLP runs in the native kernel when it builds: XLA's batched
  products with separate bias and ReLU passes take twice the kernel's time on W2's network.
- XLA's variadic reduction is slow on GPUs for large tensors (8× adam for 11 means at 124M
  parameters), so there K ordinary means are used instead.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

KERNELS = ("auto", "xla", "pallas", "interpret", "native")
KERNEL_MIN_SIZE = 1 << 16  # elements; smaller tensors stay out of the Pallas kernels
WIDE_NETWORK = 16  # hidden units above which a per-parameter MLP runs in the network kernel


def check_kernel(kernel: str, name: str) -> None:
    """A kind's `kernel` option must be one of KERNELS."""
    if kernel not in KERNELS:
        raise ValueError(f"{name}: kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")


def backend() -> str:
    return jax.default_backend()


def large(x: jax.Array, min_size: int = KERNEL_MIN_SIZE) -> bool:
    return x.size >= min_size


def resolve(kernel: str, eligible: bool, on: str | None = None) -> str:
    """The path for work that a kernel could run (`eligible`): "xla" when not eligible, else the
    requested kernel, with "auto" meaning the Pallas kernels on GPUs and XLA elsewhere."""
    if not eligible:
        return "xla"
    if kernel == "auto":
        return "pallas" if (on or backend()) == "gpu" else "xla"
    return kernel


def network_kernel(
    kernel: str,
    hidden_sizes: tuple[int, ...],
    factored: bool,
    on: str | None = None,
    native_available: Callable[[], bool] = lambda: False,
) -> str:
    """The path of an MLP optimizer's per-parameter network: on GPUs the Pallas network kernel
    for wide networks without factored accumulators (the kernel reads full-size accumulators
    only); on CPUs the native kernel for wide networks when `native_available()` (asked only
    then: the caller's `lopt.learned.native.available` builds the kernel on its first call);
    else XLA. This module imports nothing of lopt: callers say what is available."""
    on = on or backend()
    if kernel == "native" and on != "cpu":
        raise ValueError(f"kernel 'native' runs on CPUs only, not on {on}")
    if kernel != "auto":
        return kernel
    wide = max(hidden_sizes) > WIDE_NETWORK
    if on == "cpu":
        return "native" if wide and native_available() else "xla"
    return resolve(kernel, wide and not factored, on)


def matrix_kernel(kernel: str, p: jax.Array, min_size: int = KERNEL_MIN_SIZE, on: str | None = None) -> str:
    """The path of a tensor's 2-D kernels (VeLO, feature statistics): matrices of at least
    `min_size` elements only."""
    return resolve(kernel, p.ndim == 2 and large(p, min_size), on)


def variadic_reduction(x: jax.Array) -> bool:
    """Whether K means over `x` should be one variadic XLA reduction (CPUs, small tensors)."""
    return backend() == "cpu" or not large(x)

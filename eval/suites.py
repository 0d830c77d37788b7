"""Named evaluation suites: lists of named tasks held out from meta-training.

The task families' defaults (`tasks.families`) sample 1-2 hidden layers of width 16-64 and
conv nets of 1-2 layers; `embedded-ood` holds wider and deeper networks than those, so
generalisation is measured rather than assumed. `gpu` adds the conv nets to the out-of-family
networks: sized for a GPU at 2,000+ steps (TFDS datasets join it via `tfds:<name>` tasks when
prepared).
"""

from __future__ import annotations

SUITES: dict[str, tuple[str, ...]] = {
    "embedded-small": (
        "digits-mlp-tanh64x2",
        "mnist1d-mlp-gelu64x2",
        "quadratic-10-cond100",
    ),
    "embedded-full": (
        "digits-mlp-relu32",
        "digits-mlp-tanh64x2",
        "mnist1d-mlp-gelu64x2",
        "digits-conv-16-32",
        "mnist1d-conv-16-32",
        "pytext-transformer-32x1",
        "quadratic-10-cond100",
        "rosenbrock-2",
    ),
    "gpu": (
        "digits-mlp-relu256x3",
        "mnist1d-mlp-relu128x4",
        "digits-conv-16-32",
        "mnist1d-conv-16-32",
        "pytext-transformer-64x2",
    ),
    "embedded-ood": (
        "digits-mlp-relu256x3",
        "mnist1d-mlp-relu128x4",
        "pytext-transformer-64x2",
    ),
}


def suite_tasks(name: str) -> tuple[str, ...]:
    """The task names of suite `name`; unknown names list the valid ones."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
    return SUITES[name]

"""Named evaluation suites: lists of named tasks held out from meta-training.

The task families' defaults (`tasks.families`) sample 1-2 hidden layers of width 16-64 and
conv nets of 1-2 layers; `embedded-ood` holds wider and deeper networks than those, so
generalisation is measured rather than assumed. `gpu` adds the conv nets to the out-of-family
networks: sized for a GPU at 2,000+ steps (TFDS datasets join it via `tfds:<name>` tasks when
prepared).

An entry `name*k` runs task `name` for k times the evaluation's `num_steps` (long horizons).

`generalisation` (13 entries) holds tasks outside every meta-training family's default range:
wider and deeper MLPs, conv nets of other depths and widths, transformer LMs of two sizes
beyond the family's, a teacher–student regression, a classifier trained by the square loss, and
two runs 5× the suite's length. `generalisation-embedded` is its CPU-sized subset.
`generalisation-unmemorised` adds held-out tasks that no optimizer memorises (LMs with longer
contexts, a wider conv net, a regression on fresh noisy data, one LM at 5× the length), where
every optimizer's final train loss stays above 1e-3 and so ranks the optimizers.
`validation` holds the tasks meta-training may use for its choices (disjoint from every suite);
its last two, a wide regression on fresh noisy data and a wider LM on longer contexts, are the
ones no optimizer memorises.
"""

from __future__ import annotations

from lopt.tasks import TaskSpec, task_spec

SUITES: dict[str, tuple[str, ...]] = {
    "embedded-small": ("digits-mlp-tanh64x2", "mnist1d-mlp-gelu64x2", "quadratic-10-cond100"),
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
    "embedded-ood": ("digits-mlp-relu256x3", "mnist1d-mlp-relu128x4", "pytext-transformer-64x2"),
    "generalisation": (
        "digits-mlp-relu256x3",
        "mnist1d-mlp-relu128x4",
        "mnist1d-mlp-silu512",
        "digits-mlp-gelu32x6",
        "mnist1d-mlp-tanh256x2",
        "digits-mlp-relu128x2-mse",
        "digits-conv-32-64-128",
        "mnist1d-conv-64-128",
        "pytext-transformer-64x3",
        "pytext-transformer-128x2",
        "regression-mlp-relu128x2",
        "mnist1d-mlp-gelu128x3*5",
        "regression-mlp-relu128x2*5",
    ),
    "generalisation-unmemorised": (
        "pytext-transformer-128x4-s128",
        "pytext-transformer-96x3-s64",
        "mnist1d-large-conv-128-256",
        "regression-mlp-silu256x3",
        "pytext-transformer-96x3-s64*5",
    ),
    "generalisation-embedded": (
        "mnist1d-mlp-relu128x4",
        "digits-mlp-gelu32x6",
        "digits-mlp-relu128x2-mse",
        "regression-mlp-relu128x2",
    ),
    "validation": (
        "digits-mlp-silu96x2",
        "mnist1d-conv-48",
        "pytext-transformer-48x2",
        "regression-mlp-tanh64x3",
        "regression-mlp-gelu192x2",
        "pytext-transformer-80x2-s64",
    ),
}


def parse_entry(entry: str) -> tuple[str, int]:
    """A suite entry as (task name, step multiplier): 'name' -> (name, 1), 'name*5' -> (name, 5)."""
    name, star, multiplier = entry.partition("*")
    if not star:
        return name, 1
    if not multiplier.isdigit() or int(multiplier) <= 0:
        raise ValueError(f"suite entry {entry!r}: the text after '*' must be a positive whole number")
    return name, int(multiplier)


def entry_spec(entry: str) -> TaskSpec:
    """The task spec of a suite entry (its step multiplier dropped); unknown names list the valid ones."""
    return task_spec(parse_entry(entry)[0])


def suite_tasks(name: str) -> tuple[str, ...]:
    """The task names of suite `name`; unknown names list the valid ones."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
    return SUITES[name]

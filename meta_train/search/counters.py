"""A search's counters (children, trained, cache hits, rejections, hurdle stops, seconds by
part) and the rates the progress bar, the summary and `benchmarks/search_throughput.py` report
from them. Kept in state.json, so the rates of a resumed search cover all of it."""

from __future__ import annotations

from typing import Any

from lopt.meta_train.search.config import FitnessSpec


PARTS = ("mutate", "probe", "train", "compile")  # where a generation's seconds go


def fresh() -> dict[str, Any]:
    """The counters of a search before its seed is scored."""
    names = ("children", "trained", "structural_hits", "functional_hits", "rejected", "hurdle_stops", "mutation_tries")
    return {**dict.fromkeys(names, 0), "seconds": 0.0}


def inner_steps(counts: dict[str, Any], spec: FitnessSpec) -> int:
    """Inner steps of program training so far: every task for the trained, the first for
    those the hurdle stopped."""
    first = spec.task_steps(spec.tasks[0]) * len(spec.lr_multipliers) * spec.seeds
    return counts["trained"] * spec.inner_steps_per_program + counts.get("hurdle_stops", 0) * first


def statistics(counts: dict[str, Any], spec: FitnessSpec) -> dict[str, float]:
    """Rates per second of search time (with and without the seconds spent compiling population
    calls, paid once per shape), cache-hit and rejection rates, and each part's share of the time."""
    c = counts
    children = max(c["children"], 1)
    seconds = max(c["seconds"], 1e-9)
    compiled = max(c["seconds"] - c.get("compile_seconds", 0.0), 1e-9)
    steps = inner_steps(c, spec)
    return {
        "programs_per_second": c["children"] / seconds,
        "trained_per_second": c["trained"] / seconds,
        "cache_hit_rate": (c["structural_hits"] + c["functional_hits"]) / children,
        "rejected_rate": c["rejected"] / children,
        "children": c["children"],
        "trained": c["trained"],
        "hurdle_stops": c.get("hurdle_stops", 0),  # trained on the first task only (fitness.hurdle)
        "inner_steps_per_second": steps / seconds,
        "inner_steps_per_second_compiled": steps / compiled,
        "programs_per_second_compiled": c["children"] / compiled,
        # compile: part of train and of precompiling
        **{
            f"share_{part}": c.get(f"{part}_seconds", 0.0) / seconds for part in ("mutate", "probe", "train", "compile")
        },
    }

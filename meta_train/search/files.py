"""A search folder's resume files, as plain functions over JSON: `state.json` (the strategy's
state, the counters and the generation in flight), the per-child `log.jsonl` and
`validation.jsonl` (cut back to the saved generation on resume) and the hash cache
`cache.jsonl`. `meta_train.search.job.Search` decides when they are written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lopt.config import ConfigError
from lopt.meta_train.search.strategy import Child, EvolutionState, Member


def json_float(x: float) -> float | None:
    """A fitness as JSON: non-finite as null."""
    return None if not np.isfinite(x) else float(x)


def _finite_or_inf(x: float | None) -> float:
    return float("inf") if x is None else x


def member_record(member: Member) -> dict[str, Any]:
    """A member as JSON (non-finite fitness as null)."""
    return member._asdict() | {"fitness": json_float(member.fitness)}


def member_of(record: dict[str, Any]) -> Member:
    """Inverse of `member_record` (null fitness back to +inf)."""
    return Member(**(record | {"fitness": _finite_or_inf(record["fitness"])}))


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so a kill never leaves it half-written."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Saved(NamedTuple):
    """What `state.json` holds, read back: the generation, the strategy's state, the counters,
    the validation scores by program text, the best validated member and the children that were
    in flight (as `{parent, mutation, text, tries}` records, relaunched on resume)."""

    generation: int
    evolution: EvolutionState
    counters: dict[str, Any]
    validated: dict[str, float]
    best_validated: Member | None
    in_flight: list[dict[str, Any]]


def write_state(directory: Path, saved: Saved) -> None:
    """`state.json`, atomically."""
    evolution = saved.evolution
    state = {
        "generation": saved.generation,
        "next_id": evolution.next_id,
        "seed_fitness": json_float(evolution.seed.fitness),
        "best": member_record(evolution.best),
        "since_improvement": evolution.since_improvement,
        "restarts": evolution.restarts,
        "counters": saved.counters,
        "population": [member_record(m) for m in evolution.population],
        "validated": {text: json_float(v) for text, v in saved.validated.items()},
        "best_validated": None if saved.best_validated is None else member_record(saved.best_validated),
        "in_flight": saved.in_flight or None,
    }
    atomic_write(directory / "state.json", json.dumps(state))


def in_flight_records(children: Iterable[Child]) -> list[dict[str, Any]]:
    return [{"parent": c.parent, "mutation": c.mutation, "text": c.text, "tries": c.tries} for c in children]


def read_state(directory: Path, seed_text: str) -> Saved:
    """`state.json` read back (a one-line ConfigError when it is missing or damaged)."""
    path = directory / "state.json"
    if not path.is_file():
        raise ConfigError(
            f"{directory} holds a search that stopped before its first generation was saved (no "
            "state.json), so it cannot be resumed; delete the folder or use another to start afresh"
        )
    try:
        state = json.loads(path.read_text())
        seed = Member(0, seed_text, _finite_or_inf(state["seed_fitness"]), 0)
        evolution = EvolutionState(
            tuple(member_of(m) for m in state["population"]),
            member_of(state["best"]),
            int(state["next_id"]),
            int(state["since_improvement"]),
            int(state["restarts"]),
            seed,
        )
        best_validated = state.get("best_validated")
        return Saved(
            int(state["generation"]),
            evolution,
            {"hurdle_stops": 0, **state["counters"]},
            {text: _finite_or_inf(v) for text, v in state.get("validated", {}).items()},
            None if best_validated is None else member_of(best_validated),
            list(state.get("in_flight") or []),
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as error:
        raise ConfigError(
            f"{path} is damaged ({type(error).__name__}: {str(error)[:80]}); the search cannot be resumed from it"
        ) from None


def trim_log(log: Path, generation: int) -> None:
    """Drop the lines a killed generation wrote after the last saved state (generation)."""
    if not log.is_file():
        return
    kept = []
    for line in (line for line in log.read_text().splitlines() if line.strip()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by the kill
        if entry["generation"] > generation:
            break
        kept.append(line)
    atomic_write(log, "".join(line + "\n" for line in kept))


def append_lines(path: Path, entries: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per entry (log.jsonl, cache.jsonl, validation.jsonl)."""
    with open(path, "a") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")


def read_cache(directory: Path) -> tuple[dict[str, float], dict[str, float]]:
    """`cache.jsonl` as (structural hash -> fitness, functional hash -> fitness); a line cut by a
    kill is skipped."""
    structural: dict[str, float] = {}
    functional: dict[str, float] = {}
    for line in (directory / "cache.jsonl").read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        fitness = _finite_or_inf(entry["fitness"])
        structural[entry["structural"]] = fitness
        if entry.get("functional"):
            functional[entry["functional"]] = fitness
    return structural, functional

"""`lopt search`: the job runner of a search over optimizer programs (Chen et al. 2023): files,
caches, resume after a kill, progress. What to try next is the strategy's
(`meta_train.search.strategy`: regularized evolution by default, `ask` / `tell` on a state);
this module scores what it asks for and tells it the scores.

Evaluation goes through three filters before any training:

1. structural hash -> cached fitness (renamed / reordered / dead-code variants);
2. functional hash from a short probe run -> cached fitness (algebraic equivalents), and the
   same probe rejects programs with non-finite updates (fitness +inf, never trained);
3. training on the proxy tasks (meta_train.search.fitness), all remaining children at once.

Files in `run.output_dir`:
    config.json     the job config (a resume must match it)
    state.json      population, counters, best; written atomically after every generation
    log.jsonl       one line per child: generation, id, parent, mutation, text, hashes, fitness,
                    how it was scored — enough to replay the search
    cache.jsonl     structural / functional hash -> fitness, shared across resumes
    validation.jsonl  meta-validation scores of the best programs, every few generations
                    (when [validation] names a task)
    funnel.json, best.txt, summary.json   written after the search (meta_train.search.pipeline)

The strategy's generation g is a function of its state and g, so a search is deterministic per
seed and a resumed search continues exactly as an uninterrupted one.

With `search.overlap` the host mutates generation g + 1 from the population that has scores up
to g − 1 while the device trains generation g (one `_Flight` in flight between generations;
state.json keeps its children, so a resume relaunches them). A child of g + 1 equal to one of
g (structurally or by its probe) is not trained: it takes that child's score when g lands.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lopt import jobdir
from lopt.config import ConfigError
from lopt.programs.analysis import Graph, check, structural_hash
from lopt.programs.functional import probe_report
from lopt.programs.lang import parse
from lopt.meta_train.search import counters, files, mutation
from lopt.meta_train.search.config import SearchConfig, resume_record, saved_config
from lopt.meta_train.search.files import atomic_write, json_float
from lopt.meta_train.search.fitness import evaluator
from lopt.meta_train.search.scoring import Staged
from lopt.meta_train.search.scoring import score as fitness_of
from lopt.meta_train.search.strategy import Child, Member, make_strategy, mutate_here


@dataclasses.dataclass
class _Flight:
    """A generation's children between mutation and their scores (`Search._launch`).

    children: the strategy's proposals; fitness/how: what the caches answered at launch (None/''
    where training or the generation before will); first: the first child of each structure the
    cache did not know (`unique` in order); functional_of: their probe hashes; train: the children
    dispatched to the device (`staged`); waiting: children equal to one of the generation in flight
    before this one, answered from the cache when this one lands."""

    generation: int
    children: list[Child]
    fitness: list[float | None]
    how: list[str]
    first: dict[str, int]
    functional_of: dict[int, str]
    train: list[int]
    waiting: list[int]
    staged: Staged | None

    @property
    def unique(self) -> list[int]:
        return sorted(self.first.values())

    @property
    def graphs(self) -> list[Graph]:
        return [c.graph for c in self.children]

    @property
    def hashes(self) -> list[str]:
        return [c.structural for c in self.children]


class Search:
    """A search job in a directory (fresh or resumed)."""

    def __init__(self, config: SearchConfig, *, resume: bool = False, progress: bool = True):
        self.config = config
        self.strategy = make_strategy(config.search)
        self.dir = Path(config.run.output_dir)
        self.progress = progress
        if config.search.reject_nan_at_zero:
            ((_, finite, at_zero),) = probe_report(
                [check(parse(config.seed_program_text()), config.search.max_statements)]
            )
            if finite and not at_zero:
                raise ConfigError(
                    f"search.reject_nan_at_zero: the seed program {config.search.seed_program!r} is not finite "
                    "where a gradient is exactly zero, so the search would reject it (use adamw_paper_eps)"
                )
        self.evaluate = evaluator(config.fitness)
        self.evaluate_validation = evaluator(config.validation_spec()) if config.validation.task else None
        self.structural: dict[str, float] = {}
        self.functional: dict[str, float] = {}
        self.validated: dict[str, float] = {}  # program text -> meta-validation fitness
        self.best_validated: Member | None = None  # its `fitness` is the validation fitness
        self._flight: _Flight | None = None  # the generation launched ahead (search.overlap)
        self._pool: mutation.Workers | None = None  # mutation processes (search.workers)
        self._relaunch: list[Child] = []  # in-flight children read back on resume
        config_json = json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
        # before anything is read or written: the folder is a search's, or new, or empty
        jobdir.claim(self.dir, "search")
        if resume:
            if resume_record(saved_config(self.dir)) != resume_record(json.loads(config_json)):
                raise ConfigError(f"{self.dir}: the config differs from the one this search started with")
        elif (self.dir / "state.json").exists():
            raise ConfigError(f"{self.dir} already holds a search; resume it with `lopt search --resume {self.dir}`")
        elif any((self.dir / name).exists() for name in ("config.json", "log.jsonl", "cache.jsonl", "best.txt")):
            raise ConfigError(
                f"{self.dir} holds a search that stopped before its first generation was saved (no "
                "state.json), so it cannot be resumed; delete the folder or use another to start afresh"
            )
        if resume:  # a missing or damaged state is reported before minutes of compiling
            self._load()
        # Precompiled first, so that the seed's scoring and the hurdle's reference find their calls compiled
        # (and a fresh search's calls are lowered in parallel by precompile's workers, not one by one here).
        compiling = 0.0
        if config.fitness.precompile:
            clock = time.perf_counter()
            self.evaluate.precompile(config.fitness.precompile, matrix=config.search.space == "matrix")
            compiling = time.perf_counter() - clock
        if config.fitness.hurdle:  # the seed's first-task score is the hurdle's reference
            self.evaluate.hurdle.set_reference(check(parse(config.seed_program_text()), config.search.max_statements))
        if not resume:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / "config.json", config_json)
            (self.dir / "log.jsonl").write_text("")
            (self.dir / "cache.jsonl").write_text("")
            (self.dir / "validation.jsonl").write_text("")
            self._start()
        if config.fitness.precompile:
            for counter in ("compile_seconds", "seconds"):
                self.counters[counter] = self.counters.get(counter, 0.0) + compiling
        if self._relaunch:  # the generation in flight when the search stopped (search.overlap), after the precompile
            clock = time.perf_counter()
            self._flight = self._launch(self.generation + 1, self._relaunch, None)
            self._spent("seconds", clock)

    # -- persistence ------------------------------------------------------------------------
    def _start(self) -> None:
        text = self.config.seed_program_text()
        graph = check(parse(text), self.config.search.max_statements)
        self.counters = counters.fresh()
        clock = time.perf_counter()
        (fitness,), _ = self._score([graph])
        self._spent("seconds", clock)
        self.state = self.strategy.init(text, fitness)
        self.generation = 0
        self._log(
            [
                {
                    "generation": 0,
                    "id": 0,
                    "parent": None,
                    "mutation": "seed",
                    "text": text,
                    "structural": structural_hash(graph),
                    "fitness": json_float(fitness),
                    "scored": "trained",
                }
            ]
        )
        self._save()

    def _save(self) -> None:
        in_flight = [] if self._flight is None else files.in_flight_records(self._flight.children)
        saved = files.Saved(self.generation, self.state, self.counters, self.validated, self.best_validated, in_flight)
        files.write_state(self.dir, saved)

    def _load(self) -> None:
        """Read state.json, the logs (cut back to its generation) and the caches back."""
        saved = files.read_state(self.dir, self.config.seed_program_text())
        self.generation, self.state, self.counters, self.validated, self.best_validated, in_flight = saved
        for log in (self.dir / "log.jsonl", self.dir / "validation.jsonl"):
            files.trim_log(log, self.generation)
        self.structural, self.functional = files.read_cache(self.dir)
        self._relaunch = []
        for c in in_flight:
            graph = check(parse(c["text"]), self.config.search.max_statements)
            self._relaunch.append(
                Child(c["parent"], c["mutation"], c["text"], c["tries"], graph, structural_hash(graph))
            )

    def _log(self, entries: list[dict[str, Any]]) -> None:
        files.append_lines(self.dir / "log.jsonl", entries)

    # -- scoring ------------------------------------------------------------------------------
    def _score(self, graphs: list[Graph]) -> tuple[list[float], list[str]]:
        """Fitness of each graph through the three filters; also how each was scored."""
        return self._land(self._launch(0, [Child(None, "", "", 0, g, structural_hash(g)) for g in graphs], None))

    def _train_clock(self, since: float, compiling: float) -> None:
        """Count the seconds since `since` as training, and the evaluator's compiling since it
        stood at `compiling` as compiling too."""
        self.counters["compile_seconds"] = (
            self.counters.get("compile_seconds", 0.0) + self.evaluate.compile_seconds - compiling
        )
        self._spent("train_seconds", since)

    def _launch(self, generation: int, children: list[Child], earlier: _Flight | None) -> _Flight:
        """Answer what the caches can, probe the rest and dispatch the first task's training for
        the survivors (not waiting for it); `earlier`: the generation still in flight."""
        graphs, hashes = [c.graph for c in children], [c.structural for c in children]
        fitness: list[float | None] = [self.structural.get(h) for h in hashes]
        how = ["structural" if f is not None else "" for f in fitness]
        first: dict[str, int] = {}
        for i, f in enumerate(fitness):
            if f is None:
                first.setdefault(hashes[i], i)
        unique = sorted(first.values())
        clock = time.perf_counter()
        probes = [
            (fhash, finite and (at_zero or not self.config.search.reject_nan_at_zero))
            for fhash, finite, at_zero in probe_report([graphs[i] for i in unique])
        ]
        self._spent("probe_seconds", clock)
        flying_structures = set() if earlier is None else {earlier.hashes[i] for i in earlier.unique}
        flying_functions = set() if earlier is None else set(earlier.functional_of.values())
        train, waiting, functional_of = [], [], {}
        for i, (fhash, finite) in zip(unique, probes):
            functional_of[i] = fhash
            if fhash in self.functional:
                fitness[i], how[i] = self.functional[fhash], "functional"
            elif hashes[i] in flying_structures or fhash in flying_functions:
                waiting.append(i)
            elif not finite:
                fitness[i], how[i] = float("inf"), "rejected"
            else:
                train.append(i)
        staged = None
        if train:
            clock, compiling = time.perf_counter(), self.evaluate.compile_seconds
            staged = self.evaluate.start([graphs[i] for i in train])
            self._train_clock(clock, compiling)
        return _Flight(generation, children, fitness, how, first, functional_of, train, waiting, staged)

    def _advance(self, flight: _Flight) -> None:
        """Wait for the flight's first task and dispatch the rest for the hurdle's survivors."""
        if flight.staged is not None:
            clock, compiling = time.perf_counter(), self.evaluate.compile_seconds
            flight.staged.advance()
            self._train_clock(clock, compiling)

    def _land(self, flight: _Flight) -> tuple[list[float], list[str]]:
        """Wait for the flight's training and return every child's fitness and how it was
        scored; the caches and cache.jsonl learn the new structures."""
        fitness, how = flight.fitness, flight.how
        if flight.staged is not None:
            clock, compiling = time.perf_counter(), self.evaluate.compile_seconds
            values = fitness_of(flight.staged.losses())
            self._train_clock(clock, compiling)
            for i, value, kept in zip(flight.train, values, flight.staged.kept):
                fitness[i], how[i] = float(value), "trained" if kept else "hurdle"
        for i in flight.waiting:  # the generation before has landed: the caches know them now
            known = self.structural.get(flight.hashes[i])
            fitness[i], how[i] = (
                (known, "structural") if known is not None else (self.functional[flight.functional_of[i]], "functional")
            )
        for i in flight.unique:
            self.structural[flight.hashes[i]] = fitness[i]
            self.functional.setdefault(flight.functional_of[i], fitness[i])
        files.append_lines(
            self.dir / "cache.jsonl",
            (
                {
                    "structural": flight.hashes[i],
                    "functional": flight.functional_of[i],
                    "fitness": json_float(fitness[i]),
                }
                for i in flight.unique
            ),
        )
        for i, f in enumerate(fitness):
            if f is None:  # a duplicate within this batch
                fitness[i], how[i] = fitness[flight.first[flight.hashes[i]]], "structural"
        return [float(f) for f in fitness], how

    # -- evolution ----------------------------------------------------------------------------
    def _propose(self, generation: int) -> list[Child]:
        """The strategy's children for `generation` (mutated in `search.workers` processes when
        there are any)."""
        clock = time.perf_counter()
        mutate_many = mutate_here
        if self.config.search.workers:
            self._pool = self._pool or mutation.Workers(self.config.search.workers)
            mutate_many = self._pool.map
        children = self.strategy.ask(self.state, generation, mutate_many)
        self._spent("mutate_seconds", clock)
        return children

    def close(self) -> None:
        """Stop the mutation workers (`search.workers`), if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def step(self) -> dict[str, Any]:
        """One generation; returns its statistics. With `search.overlap` the next generation is
        mutated and launched before this one lands."""
        s = self.config.search
        start = time.perf_counter()
        flight = self._flight or self._launch(self.generation + 1, self._propose(self.generation + 1), None)
        self._flight = None
        if s.overlap and flight.generation < s.generations:
            following = self._propose(flight.generation + 1)  # while the device trains `flight`'s first task
            self._advance(flight)
            self._flight = self._launch(flight.generation + 1, following, flight)
        scores, how = self._land(flight)
        self.generation = flight.generation
        self.state, members, restarted = self.strategy.tell(self.state, flight.children, scores, self.generation)
        counter = {
            "trained": "trained",
            "structural": "structural_hits",
            "functional": "functional_hits",
            "rejected": "rejected",
            "hurdle": "hurdle_stops",
        }
        entries = []
        for child, member, scored in zip(flight.children, members, how):
            entries.append(
                {
                    "generation": self.generation,
                    "id": member.id,
                    "parent": child.parent,
                    "mutation": child.mutation,
                    "text": child.text,
                    "structural": child.structural,
                    "fitness": json_float(member.fitness),
                    "scored": scored,
                }
            )
            self.counters["children"] += 1
            self.counters["mutation_tries"] += child.tries
            self.counters[counter[scored]] += 1
        self._log(entries)
        seconds = time.perf_counter() - start
        self.counters["seconds"] += seconds
        validation = self.config.validation
        if validation.task and self.generation % validation.every == 0:
            self._validate()  # not counted in the search rate: it is the paper's separate check
        self._save()
        return {"generation": self.generation, "best": self.best.fitness, "seconds": seconds, "restart": restarted}

    # the strategy's state, read by the pipeline, the CLI and the progress bar
    @property
    def best(self) -> Member:
        return self.state.best

    @property
    def population(self) -> tuple[Member, ...]:
        return self.state.population

    @property
    def seed_fitness(self) -> float:
        return self.state.seed.fitness

    def _spent(self, counter: str, since: float) -> None:
        """Add the seconds since `since` to a timing counter (where a generation's time goes)."""
        self.counters[counter] = self.counters.get(counter, 0.0) + time.perf_counter() - since

    def _validate(self) -> None:
        """Meta-validation of the best distinct programs not yet validated (ValidationSection)."""
        ranked = sorted([self.best, *self.population], key=lambda m: (m.fitness, m.id))
        pending: list[Member] = []
        for member in ranked:
            if (
                member.text not in self.validated
                and np.isfinite(member.fitness)
                and all(member.text != p.text for p in pending)
            ):
                pending.append(member)
            if len(pending) == self.config.validation.top:
                break
        if not pending:
            return
        scores = self.evaluate_validation([check(parse(m.text)) for m in pending])
        rows = []
        for member, score in zip(pending, scores):
            self.validated[member.text] = float(score)
            rows.append(
                {
                    "generation": self.generation,
                    "id": member.id,
                    "text": member.text,
                    "fitness": json_float(member.fitness),
                    "validation": json_float(score),
                }
            )
            if np.isfinite(score) and (self.best_validated is None or score < self.best_validated.fitness):
                self.best_validated = Member(member.id, member.text, float(score), member.born)
        files.append_lines(self.dir / "validation.jsonl", rows)

    def inner_steps(self) -> int:
        return counters.inner_steps(self.counters, self.config.fitness)

    def statistics(self) -> dict[str, float]:
        return counters.statistics(self.counters, self.config.fitness)

    def run(self) -> Member:
        """Run the remaining generations (with a progress bar); returns the best member."""
        remaining = self.config.search.generations - self.generation
        bar = tqdm(
            total=self.config.search.generations,
            initial=self.generation,
            desc="lopt search",
            unit="gen",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        limit = self.config.search.max_seconds
        for _ in range(max(remaining, 0)):
            if limit and time.perf_counter() - start > limit:
                break
            self.step()
            stats = self.statistics()
            bar.update(1)
            validated = {} if self.best_validated is None else {"val": f"{self.best_validated.fitness:.4f}"}
            bar.set_postfix(
                best=f"{self.best.fitness:.4f}",
                seed=f"{self.seed_fitness:.4f}",
                **validated,
                progs_s=f"{stats['programs_per_second']:.1f}",
                hits=f"{stats['cache_hit_rate']:.0%}",
            )
        bar.close()
        self.close()
        return self.best

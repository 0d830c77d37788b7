"""Search strategies in evosax's shape: `init`, `ask` and `tell`, pure functions of a NamedTuple
state, with no files, caches or devices (those are the job runner's, `meta_train.search.job`).

- `RegularizedEvolution` (Real et al. 2019, as the Lion search used it, Chen et al. 2023): each
  generation draws `children` tournaments of size T from the population, mutates each winner once
  (`meta_train.search.mutation`: re-mutating until the child is valid and new), and after scoring
  adds the children and removes as many of the oldest members (age-based removal). After
  `restart_after` generations without a better best the population restarts from the seed and
  from the best so far, alternately (the paper restarted both ways). `mode="constants"` mutates
  constants only.
- `RandomSearch`: every child a fresh random program; the population and best are kept as for
  evolution, so the runner and its files are the same.

Generation g draws from np.random.default_rng([seed, g]) and child k mutates with its own
generator, [seed, g, k], so `ask` is a function of (state, g) whatever runs the mutations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from lopt.programs.analysis import Graph, check, structural_hash
from lopt.programs.lang import format_program, parse
from lopt.meta_train.search import mutation


class Member(NamedTuple):
    """A program in the population: its id, text, fitness (lower is better) and generation."""

    id: int
    text: str
    fitness: float
    born: int


class Child(NamedTuple):
    """A proposed program: the parent it was mutated from (None for a random one), the mutation's
    description, the text, how many mutation tries it took, its pruned graph and structural hash."""

    parent: int | None
    mutation: str
    text: str
    tries: int
    graph: Graph
    structural: str


class EvolutionState(NamedTuple):
    """population: oldest first. seed: the seed program as a member (restarts go back to it)."""

    population: tuple[Member, ...]
    best: Member
    next_id: int
    since_improvement: int
    restarts: int
    seed: Member


# a mutation job -> (text, description, tries, structural hash); `mutation.mutate_text` by default
MutateMany = Callable[[list[tuple[Any, ...]]], list[tuple[str, str, int, str]]]


def mutate_here(jobs: list[tuple[Any, ...]]) -> list[tuple[str, str, int, str]]:
    """Run mutation jobs in this process (`mutation.Workers.map` runs them in others)."""
    return [mutation.mutate_text(*job) for job in jobs]


@dataclasses.dataclass(frozen=True)
class RegularizedEvolution:
    """Tournament selection, one mutation per child, age-based removal, restarts (module docstring)."""

    population_size: int
    children: int
    tournament: int
    seed: int = 0
    restart_after: int = 0
    max_statements: int = 24
    max_rounds: int = 0
    mode: str = "all"
    space: str = "lion"

    def __post_init__(self) -> None:
        if not 1 <= self.tournament <= self.population_size or not 1 <= self.children <= self.population_size:
            raise ValueError(
                f"need 1 <= tournament, children <= population; got tournament {self.tournament}, "
                f"children {self.children}, population {self.population_size}"
            )
        if self.mode not in ("all", "constants"):
            raise ValueError(f"mode must be 'all' or 'constants', got {self.mode!r}")

    def init(self, seed_text: str, seed_fitness: float) -> EvolutionState:
        """The population: `population_size` copies of the seed program, all born at generation 0."""
        population = tuple(Member(i, seed_text, seed_fitness, 0) for i in range(self.population_size))
        seed = Member(0, seed_text, seed_fitness, 0)
        return EvolutionState(population, seed, len(population), 0, 0, seed)

    def ask(self, state: EvolutionState, generation: int, mutate_many: MutateMany = mutate_here) -> list[Child]:
        """Generation `generation`'s children of the population in `state`."""
        rng = np.random.default_rng([self.seed, generation])
        winners = []
        for _ in range(self.children):
            picks = rng.choice(len(state.population), size=self.tournament, replace=False)
            winners.append(min((state.population[i] for i in picks), key=lambda m: (m.fitness, -m.born)))
        jobs = [
            (w.text, (self.seed, generation, k), self.mode, self.max_statements, self.max_rounds, self.space)
            for k, w in enumerate(winners)
        ]
        return [
            Child(winner.id, description, text, tries, check(parse(text), self.max_statements), graph_hash)
            for winner, (text, description, tries, graph_hash) in zip(winners, mutate_many(jobs))
        ]

    def tell(
        self, state: EvolutionState, children: Sequence[Child], fitness: Sequence[float], generation: int
    ) -> tuple[EvolutionState, list[Member], str | None]:
        """The state after generation `generation`'s children scored `fitness`: (new state, the
        children as members, 'seed' or 'best' when the population restarted, else None)."""
        if len(children) != len(fitness):
            raise ValueError(f"{len(children)} children but {len(fitness)} fitness values")
        members = [
            Member(state.next_id + i, c.text, float(f), generation) for i, (c, f) in enumerate(zip(children, fitness))
        ]
        next_id = state.next_id + len(members)
        population = state.population[len(members) :] + tuple(members)
        best, since = state.best, state.since_improvement + 1
        improved = min(members, key=lambda m: m.fitness, default=None)
        if improved is not None and improved.fitness < best.fitness:
            best, since = improved, 0
        restarted, restarts = None, state.restarts
        if self.restart_after and since >= self.restart_after:
            restarted = "seed" if restarts % 2 == 0 else "best"
            source = state.seed if restarted == "seed" else best
            population = tuple(
                Member(next_id + i, source.text, source.fitness, generation) for i in range(self.population_size)
            )
            next_id += self.population_size
            restarts, since = restarts + 1, 0
        return EvolutionState(population, best, next_id, since, restarts, state.seed), members, restarted


@dataclasses.dataclass(frozen=True)
class RandomSearch(RegularizedEvolution):
    """Random programs of up to `max_statements - 1` statements; tell as evolution's."""

    def ask(self, state: EvolutionState, generation: int, mutate_many: MutateMany = mutate_here) -> list[Child]:
        del mutate_many
        rng = np.random.default_rng([self.seed, generation])
        out = []
        for _ in range(self.children):
            program, graph = mutation.random_program(
                rng, self.max_statements - 1, max_rounds=self.max_rounds, space=self.space
            )
            out.append(Child(None, "random", format_program(program), 1, graph, structural_hash(graph)))
        return out


# a config's `search.strategy` -> (strategy class, mutation mode)
STRATEGIES: dict[str, tuple[type[RegularizedEvolution], str]] = {
    "evolution": (RegularizedEvolution, "all"),
    "random": (RandomSearch, "all"),
    "constants": (RegularizedEvolution, "constants"),
}


def make_strategy(search: Any) -> RegularizedEvolution:
    """The strategy a config's [search] section names (`EvolutionSection`, which checks the name)."""
    kind, mode = STRATEGIES[search.strategy]
    return kind(
        population_size=search.population,
        children=search.children,
        tournament=search.tournament,
        seed=search.seed,
        restart_after=search.restart_after,
        max_statements=search.max_statements,
        max_rounds=search.max_rounds,
        mode=mode,
        space=search.space,
    )

"""Search strategies as pure ask / tell on a state: no files, no caches, no device."""

from __future__ import annotations

import pytest

from lopt.programs.analysis import check
from lopt.programs.lang import format_program, parse
from lopt.programs.seeds import seed
from lopt.meta_train.search.strategy import RandomSearch, RegularizedEvolution

SEED = format_program(seed("adamw_paper"))


def test_evolution_ask_is_deterministic_and_mutates_tournament_winners():
    strategy = RegularizedEvolution(population_size=6, children=3, tournament=2, seed=5)
    state = strategy.init(SEED, 1.0)
    assert len(state.population) == 6 and state.best.fitness == 1.0 and state.next_id == 6
    first, again = strategy.ask(state, 1), strategy.ask(state, 1)
    assert [c.text for c in first] == [c.text for c in again]  # a function of (state, generation)
    assert [c.text for c in first] != [c.text for c in strategy.ask(state, 2)]
    for child in first:
        assert child.parent in {m.id for m in state.population} and child.text != SEED
        assert child.graph == check(parse(child.text), strategy.max_statements)


def test_tell_adds_children_removes_the_oldest_and_tracks_the_best():
    strategy = RegularizedEvolution(population_size=4, children=2, tournament=2, seed=0)
    state = strategy.init(SEED, 1.0)
    children = strategy.ask(state, 1)
    state, members, restarted = strategy.tell(state, children, [0.5, 2.0], 1)
    assert restarted is None
    assert [m.id for m in state.population] == [2, 3, 4, 5]  # ids 0 and 1, the oldest, left
    assert [m.fitness for m in members] == [0.5, 2.0] and all(m.born == 1 for m in members)
    assert state.best == members[0] and state.since_improvement == 0 and state.next_id == 6
    state, _, _ = strategy.tell(state, strategy.ask(state, 2), [3.0, 4.0], 2)
    assert state.best == members[0] and state.since_improvement == 1
    with pytest.raises(ValueError, match="2 children but 1 fitness"):
        strategy.tell(state, children, [1.0], 3)


def test_restarts_alternate_between_the_seed_and_the_best():
    strategy = RegularizedEvolution(population_size=3, children=1, tournament=1, seed=0, restart_after=1)
    state = strategy.init(SEED, 1.0)
    state, _, restarted = strategy.tell(state, strategy.ask(state, 1), [0.25], 1)
    assert restarted is None and state.best.fitness == 0.25  # improved: no restart
    state, _, restarted = strategy.tell(state, strategy.ask(state, 2), [9.0], 2)
    assert restarted == "seed" and {m.text for m in state.population} == {SEED} and state.restarts == 1
    state, _, restarted = strategy.tell(state, strategy.ask(state, 3), [9.0], 3)
    assert restarted == "best" and {m.fitness for m in state.population} == {0.25}


def test_random_search_proposes_fresh_programs_and_constants_mode_keeps_the_structure():
    random = RandomSearch(population_size=4, children=3, tournament=1, seed=1)
    children = random.ask(random.init(SEED, 1.0), 1)
    assert all(c.parent is None and c.mutation == "random" for c in children)
    constants = RegularizedEvolution(population_size=4, children=3, tournament=1, seed=1, mode="constants")
    for child in constants.ask(constants.init(SEED, 1.0), 1):
        assert "constant" in child.mutation
    with pytest.raises(ValueError, match="tournament"):
        RegularizedEvolution(population_size=2, children=1, tournament=3)

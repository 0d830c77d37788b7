"""Mutations of optimizer programs (Chen et al. 2023, section 2.2): insert a random statement at
a random position, delete a random statement, or modify one argument of a random statement.
Constants mutate to a fresh N(0, 1) draw or are multiplied by 2^a, a ~ N(0, 1). Redundant
statements are allowed (stepping stones). A child is re-mutated until it passes the static
checks and differs structurally from its parent (the paper found search stalls without this).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from lopt.programs.analysis import DEFAULT_MAX_STATEMENTS, Graph, check, structural_hash
from lopt.programs.batched import rounds_needed
from lopt.programs.lang import Const, Program, ProgramError, Statement, Var, format_program, parse
from lopt.programs.library import FUNCTIONS, SPACES

OPS = {space: tuple(sorted(names)) for space, names in SPACES.items()}  # a space's functions, drawn from
CONSTANT_PROBABILITY = 0.25
MAX_TRIES = 200


class MutationError(RuntimeError):
    """No valid, new child was found within the retry budget."""


def _defined_before(program: Program, index: int) -> list[str]:
    names = list(program.inputs)
    for statement in program.statements[:index]:
        if statement.target not in names:
            names.append(statement.target)
    return names


def _fresh_name(program: Program) -> str:
    used = [int(m.group(1)) for s in program.statements if (m := re.fullmatch(r"x(\d+)", s.target))]
    return f"x{max(used, default=0) + 1}"


def _random_arg(rng: np.random.Generator, names: list[str]) -> Var | Const:
    if rng.random() < CONSTANT_PROBABILITY:
        return Const(float(np.float32(rng.normal())))
    return Var(str(rng.choice(names)))


def _random_statement(rng: np.random.Generator, program: Program, index: int, space: str = "lion") -> Statement:
    names = _defined_before(program, index)
    op = str(rng.choice(OPS[space]))
    args = tuple(_random_arg(rng, names) for _ in range(FUNCTIONS[op].arity))
    targets = names + [_fresh_name(program)]
    return Statement(str(rng.choice(targets)), op, args)


def _mutate_constant(rng: np.random.Generator, value: float) -> float:
    if rng.random() < 0.5:
        return float(np.float32(rng.normal()))
    return float(np.float32(value * 2.0 ** rng.normal()))


def mutate_once(
    program: Program,
    rng: np.random.Generator,
    mode: str = "all",
    max_statements: int = DEFAULT_MAX_STATEMENTS,
    space: str = "lion",
) -> tuple[Program, str]:
    """One random mutation (may be invalid). mode 'all' or 'constants' (only constants change:
    the constant-tuning baseline); space: the function set inserted statements draw from
    (`lopt.programs.library.SPACES`)."""
    statements = list(program.statements)
    if mode == "constants":
        slots = [(i, j) for i, s in enumerate(statements) for j, a in enumerate(s.args) if isinstance(a, Const)]
        if not slots:
            raise MutationError("the program has no constant to mutate")
        i, j = slots[rng.integers(len(slots))]
        s = statements[i]
        args = list(s.args)
        args[j] = Const(_mutate_constant(rng, s.args[j].value))
        statements[i] = Statement(s.target, s.op, tuple(args))
        return Program(tuple(statements), program.returns, program.uses_step), f"constant {i + 1}.{j + 1}"
    choices = (
        ["modify"]
        + (["insert"] if len(statements) < max_statements else [])
        + (["delete"] if len(statements) > 1 else [])
    )
    kind = str(rng.choice(choices))
    if kind == "insert":
        index = int(rng.integers(len(statements) + 1))
        statements.insert(index, _random_statement(rng, program, index, space))
        return Program(tuple(statements), program.returns, program.uses_step), f"insert {index + 1}"
    if kind == "delete":
        index = int(rng.integers(len(statements)))
        del statements[index]
        return Program(tuple(statements), program.returns, program.uses_step), f"delete {index + 1}"
    index = int(rng.integers(len(statements)))
    s = statements[index]
    j = int(rng.integers(len(s.args)))
    args = list(s.args)
    names = _defined_before(program, index)
    if isinstance(args[j], Const) and rng.random() < 0.8:
        args[j] = Const(_mutate_constant(rng, args[j].value))
    elif rng.random() < 0.8:
        args[j] = Var(str(rng.choice(names)))
    else:
        args[j] = Const(float(np.float32(rng.normal())))
    statements[index] = Statement(s.target, s.op, tuple(args))
    return Program(tuple(statements), program.returns, program.uses_step), f"modify {index + 1}.{j + 1}"


def validate(program: Program, max_statements: int = DEFAULT_MAX_STATEMENTS) -> Graph:
    """The pruned graph of a mutated program, or ProgramError. Programs built in code are
    checked through their text, so every rule of the parser (reads after writes) applies."""
    text = format_program(program)
    return check(parse(text), max_statements)


def mutate(
    parent: Program,
    rng: np.random.Generator,
    mode: str = "all",
    max_statements: int = DEFAULT_MAX_STATEMENTS,
    parent_hash: str | None = None,
    max_rounds: int = 0,
    space: str = "lion",
) -> tuple[Program, str, Graph, int]:
    """A valid child that differs structurally from `parent`: (child, mutation, graph, tries).
    `parent_hash`: the parent's structural hash, where the caller has it already. `max_rounds`
    (0: no limit): a child whose schedule needs more rounds of interpreter slots
    (`lopt.programs.batched.rounds_needed`) is not valid, like one over `max_statements`.

    A parent whose live part is tiny (most statements dead) may have few new children; after
    MAX_TRIES the first valid child is returned even if it is structurally the parent (a cache
    hit, costing no training)."""
    parent_hash = parent_hash or structural_hash(parent)
    fallback = None
    for tries in range(1, MAX_TRIES + 1):
        child, description = mutate_once(parent, rng, mode, max_statements, space)
        try:
            graph = validate(child, max_statements)
        except ProgramError:
            continue
        if max_rounds and rounds_needed(graph) > max_rounds:
            continue
        if structural_hash(graph) != parent_hash:
            return child, description, graph, tries
        fallback = fallback or (child, description, graph)
    if fallback is None:
        raise MutationError(f"no valid child after {MAX_TRIES} mutations of\n{format_program(parent)}")
    return (*fallback, MAX_TRIES)


@functools.lru_cache(maxsize=4096)
def _parent(text: str) -> tuple[Program, str]:
    """A parent's program and structural hash (tournament winners recur across children)."""
    program = parse(text)
    return program, structural_hash(program)


def mutate_text(
    parent: str,
    seed: tuple[int, ...],
    mode: str = "all",
    max_statements: int = DEFAULT_MAX_STATEMENTS,
    max_rounds: int = 0,
    space: str = "lion",
) -> tuple[str, str, int, str]:
    """`mutate` on a program text with a generator of its own (`np.random.default_rng(seed)`):
    (child text, mutation, tries, child's structural hash). Text in, text out, so worker
    processes can mutate a generation's children in parallel, each child the same whichever
    process makes it."""
    program, parent_hash = _parent(parent)
    child, description, graph, tries = mutate(
        program, np.random.default_rng(seed), mode, max_statements, parent_hash, max_rounds, space
    )
    return format_program(child), description, tries, structural_hash(graph)


def random_program(
    rng: np.random.Generator,
    max_statements: int = 16,
    uses_step: bool = False,
    max_rounds: int = 0,
    space: str = "lion",
) -> tuple[Program, Graph]:
    """A random valid program (the random-search baseline): random statements, the last one
    assigning `update`; retried until valid."""
    for _ in range(MAX_TRIES * 10):
        program = Program((), ("update", "m", "v"), uses_step)
        for _ in range(int(rng.integers(1, max_statements))):
            index = len(program.statements)
            program = Program(
                program.statements + (_random_statement(rng, program, index, space),), program.returns, uses_step
            )
        last = _random_statement(rng, program, len(program.statements), space)
        program = Program(program.statements + (Statement("update", last.op, last.args),), program.returns, uses_step)
        try:
            graph = validate(program, max_statements + 1)
        except ProgramError:
            continue
        if not max_rounds or rounds_needed(graph) <= max_rounds:
            return program, graph
    raise MutationError("no valid random program found")


def worker_env(**overrides: str) -> dict[str, str]:
    """The environment of a search's worker process (`python -m lopt.meta_train.search.<module>`): this
    one's, with the project's root first on PYTHONPATH (so the module is found however the parent
    was started) and `overrides` set."""
    root = str(Path(__file__).resolve().parents[2])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        **overrides,
    }


class Workers:
    """Processes that run `mutate_text` on chunks of a generation's children (`search.workers`).

    Each is `python -m lopt.meta_train.search.mutation`, reading one JSON list of jobs per line and
    writing one JSON list of results (or {"error": ...}) per line: text in and out, so nothing
    depends on how the parent process was started (a script on stdin cannot be re-imported by
    multiprocessing's spawn) and nothing is unpickled."""

    def __init__(self, count: int) -> None:
        env = worker_env(JAX_PLATFORMS="cpu")
        self._processes = [
            subprocess.Popen(
                [sys.executable, "-m", "lopt.meta_train.search.mutation"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(count)
        ]

    def map(self, jobs: list[tuple[str, tuple[int, ...], str, int, int, str]]) -> list[tuple[str, str, int, str]]:
        """`mutate_text(*job)` for every job, in order, the jobs split evenly over the processes."""
        count = len(self._processes)
        bounds = [len(jobs) * k // count for k in range(count + 1)]
        busy = []
        for process, lo, hi in zip(self._processes, bounds[:-1], bounds[1:]):
            if hi > lo:
                process.stdin.write(json.dumps(jobs[lo:hi]) + "\n")
                process.stdin.flush()
                busy.append(process)
        results: list[tuple[str, str, int, str]] = []
        for process in busy:
            line = process.stdout.readline()
            if not line:
                raise MutationError(f"a mutation worker exited (code {process.poll()})")
            answer = json.loads(line)
            if isinstance(answer, dict):
                raise MutationError(answer["error"])
            results += [tuple(r) for r in answer]
        return results

    def close(self) -> None:
        for process in self._processes:
            process.stdin.close()
        for process in self._processes:
            process.wait(timeout=30)


def _serve() -> None:
    """A worker's loop (`Workers`): a JSON list of `mutate_text` jobs per input line."""
    for line in sys.stdin:
        try:
            answer = [
                mutate_text(parent, tuple(seed), mode, max_statements, max_rounds, space)
                for parent, seed, mode, max_statements, max_rounds, space in json.loads(line)
            ]
        except (MutationError, ProgramError) as error:
            answer = {"error": str(error)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()

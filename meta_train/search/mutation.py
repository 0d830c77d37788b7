"""Mutations of optimizer programs (Chen et al. 2023, section 2.2): insert a random statement at
a random position, delete a random statement, or modify one argument of a random statement.
Constants mutate to a fresh N(0, 1) draw or are multiplied by 2^a, a ~ N(0, 1). Redundant
statements are allowed (stepping stones). A child is re-mutated until it passes the static
checks and differs structurally from its parent (the paper found search stalls without this).
"""

from __future__ import annotations

import functools
import re

import numpy as np

from lopt.programs.analysis import DEFAULT_MAX_STATEMENTS, Graph, check, structural_hash
from lopt.programs.lang import Const, Program, ProgramError, Statement, Var, format_program, parse
from lopt.programs.library import FUNCTIONS

OPS = tuple(sorted(FUNCTIONS))
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


def _random_statement(rng: np.random.Generator, program: Program, index: int) -> Statement:
    names = _defined_before(program, index)
    op = str(rng.choice(OPS))
    args = tuple(_random_arg(rng, names) for _ in range(FUNCTIONS[op].arity))
    targets = names + [_fresh_name(program)]
    return Statement(str(rng.choice(targets)), op, args)


def _mutate_constant(rng: np.random.Generator, value: float) -> float:
    if rng.random() < 0.5:
        return float(np.float32(rng.normal()))
    return float(np.float32(value * 2.0 ** rng.normal()))


def mutate_once(program: Program, rng: np.random.Generator, mode: str = "all",
                max_statements: int = DEFAULT_MAX_STATEMENTS) -> tuple[Program, str]:
    """One random mutation (may be invalid). mode 'all' or 'constants' (only constants change:
    the constant-tuning baseline)."""
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
    choices = ["modify"] + (["insert"] if len(statements) < max_statements else []) + (["delete"] if len(statements) > 1 else [])
    kind = str(rng.choice(choices))
    if kind == "insert":
        index = int(rng.integers(len(statements) + 1))
        statements.insert(index, _random_statement(rng, program, index))
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


def mutate(parent: Program, rng: np.random.Generator, mode: str = "all",
           max_statements: int = DEFAULT_MAX_STATEMENTS, parent_hash: str | None = None) -> tuple[Program, str, Graph, int]:
    """A valid child that differs structurally from `parent`: (child, mutation, graph, tries).
    `parent_hash`: the parent's structural hash, where the caller has it already.

    A parent whose live part is tiny (most statements dead) may have few new children; after
    MAX_TRIES the first valid child is returned even if it is structurally the parent (a cache
    hit, costing no training)."""
    parent_hash = parent_hash or structural_hash(parent)
    fallback = None
    for tries in range(1, MAX_TRIES + 1):
        child, description = mutate_once(parent, rng, mode, max_statements)
        try:
            graph = validate(child, max_statements)
        except ProgramError:
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


def mutate_text(parent: str, seed: tuple[int, ...], mode: str = "all",
                max_statements: int = DEFAULT_MAX_STATEMENTS) -> tuple[str, str, int, str]:
    """`mutate` on a program text with a generator of its own (`np.random.default_rng(seed)`):
    (child text, mutation, tries, child's structural hash). Text in, text out, so worker
    processes can mutate a generation's children in parallel, each child the same whichever
    process makes it."""
    program, parent_hash = _parent(parent)
    child, description, graph, tries = mutate(program, np.random.default_rng(seed), mode, max_statements, parent_hash)
    return format_program(child), description, tries, structural_hash(graph)


def random_program(rng: np.random.Generator, max_statements: int = 16, uses_step: bool = False) -> tuple[Program, Graph]:
    """A random valid program (the random-search baseline): random statements, the last one
    assigning `update`; retried until valid."""
    for _ in range(MAX_TRIES * 10):
        program = Program((), ("update", "m", "v"), uses_step)
        for _ in range(int(rng.integers(1, max_statements))):
            index = len(program.statements)
            program = Program(program.statements + (_random_statement(rng, program, index),), program.returns, uses_step)
        last = _random_statement(rng, program, len(program.statements))
        program = Program(program.statements + (Statement("update", last.op, last.args),), program.returns, uses_step)
        try:
            return program, validate(program, max_statements + 1)
        except ProgramError:
            continue
    raise MutationError("no valid random program found")

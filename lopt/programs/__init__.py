"""Optimizer programs (Chen et al. 2023): a small DSL, its parser, static analysis, hashes,
two interpreters (per-program optax and a batched population interpreter) and a simplifier."""

from lopt.programs.analysis import check, prune, redundant_fraction, structural_hash, to_graph
from lopt.programs.interpret import to_optax
from lopt.programs.batched import encode, run_encoded
from lopt.programs.lang import Const, Program, ProgramError, Statement, Var, format_program, parse
from lopt.programs.optimizer import ProgramOptimizer, from_program
from lopt.programs.seeds import SEEDS, seed

__all__ = [
    "check",
    "prune",
    "redundant_fraction",
    "structural_hash",
    "to_graph",
    "encode",
    "run_encoded",
    "to_optax",
    "Const",
    "Program",
    "ProgramError",
    "Statement",
    "Var",
    "format_program",
    "parse",
    "ProgramOptimizer",
    "from_program",
    "SEEDS",
    "seed",
]

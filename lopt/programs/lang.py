"""Optimizer programs: straight-line code `train(w, g, m, v, lr) -> (update, m, v)` and its text.

    def train(w, g, m, v, lr):
      c = interp(g, m, 0.9)
      direction = sign(c)
      update = direction * lr
      m = interp(g, m, 0.99)
      return update, m, v

(Lion without weight decay; `lopt.programs.seeds` holds the full seed programs.)

Inputs: w (parameters), g (gradient), m and v (the two states, zero at the first step), lr (a
scalar learning-rate input). A program may also declare a sixth input `t`, the 1-based step
count (a scalar), which exact bias correction needs; the paper's signature has no such input,
and the search only uses it when the seed program declares it. Each statement applies one
library function (or an infix + − * /) to variables and float constants (numbers or pi, e,
eps). The returned names are the update (subtracted from w) and the next m and v.

The text is parsed by this module's own tokenizer and parser — never Python's eval/exec — and
`format_program(parse(text))` is the canonical text: parse ∘ format is the identity on programs.
Errors are `ProgramError`s that name the line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re

from lopt.programs.library import CONSTANTS, FUNCTIONS, INFIX

INPUTS = ("w", "g", "m", "v", "lr")
STEP_INPUT = "t"
RESERVED = {"def", "train", "return", *CONSTANTS, *FUNCTIONS}


class ProgramError(ValueError):
    """Invalid program text or structure; `line` is the 1-based line number when known."""

    MAX_LENGTH = 300  # program text echoed in a message is cut in the middle beyond this

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        if len(message) > self.MAX_LENGTH:
            half = self.MAX_LENGTH // 2
            message = f"{message[:half]} ... [{len(message) - 2 * half} characters] ... {message[-half:]}"
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclasses.dataclass(frozen=True)
class Var:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class Const:
    """A float constant; `name` is set for pi, e and eps (printed by name)."""

    value: float
    name: str | None = None

    def __str__(self) -> str:
        return self.name if self.name else repr(float(self.value))


Arg = Var | Const


@dataclasses.dataclass(frozen=True)
class Statement:
    target: str
    op: str
    args: tuple[Arg, ...]

    def __str__(self) -> str:
        function = FUNCTIONS[self.op]
        if function.infix:
            return f"{self.target} = {self.args[0]} {function.infix} {self.args[1]}"
        return f"{self.target} = {self.op}({', '.join(map(str, self.args))})"


@dataclasses.dataclass(frozen=True)
class Program:
    """statements; returns: (update, next m, next v) variable names; uses_step: declares `t`."""

    statements: tuple[Statement, ...]
    returns: tuple[str, str, str] = ("update", "m", "v")
    uses_step: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        return INPUTS + ((STEP_INPUT,) if self.uses_step else ())

    def __str__(self) -> str:
        return format_program(self)


def format_program(program: Program) -> str:
    """The canonical text of `program` (two-space indentation, one statement per line)."""
    lines = [f"def train({', '.join(program.inputs)}):"]
    lines += [f"  {statement}" for statement in program.statements]
    lines.append(f"  return {', '.join(program.returns)}")
    return "\n".join(lines) + "\n"


_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<op>[-+*/=(),:]))"
)


def _tokens(text: str, line: int) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ProgramError(f"unexpected character {text[position:].strip()[:1]!r} in {text.strip()!r}", line)
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, FUNCTIONS, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _parse_arg(tokens: list[tuple[str, str]], i: int, line: int, defined: set[str]) -> tuple[Arg, int]:
    """One argument starting at tokens[i]: a variable, a constant name or a (signed) number."""
    sign = 1.0
    if i < len(tokens) and tokens[i] == ("op", "-"):
        sign, i = -1.0, i + 1
    if i >= len(tokens):
        raise ProgramError("expected an argument", line)
    kind, text = tokens[i]
    if kind == "number":
        value = sign * float(text)
        if not math.isfinite(value):
            raise ProgramError(f"constant {text} is not a finite float", line)
        return Const(value), i + 1
    if kind == "name":
        if text in CONSTANTS:
            if sign < 0:
                raise ProgramError(f"write negative({text}) instead of -{text}", line)
            return Const(CONSTANTS[text], text), i + 1
        if sign < 0:
            raise ProgramError(f"write negative({text}) instead of -{text}", line)
        if text in FUNCTIONS:
            raise ProgramError(f"{text} is a function, not a value", line)
        if text not in defined:
            raise ProgramError(f"variable {text!r} is read before it is assigned", line)
        return Var(text), i + 1
    raise ProgramError(f"expected an argument, found {text!r}", line)


def _parse_statement(tokens: list[tuple[str, str]], line: int, defined: set[str]) -> Statement:
    if len(tokens) < 3 or tokens[0][0] != "name" or tokens[1] != ("op", "="):
        raise ProgramError("expected a statement `name = function(args)` or `name = a op b`", line)
    target = tokens[0][1]
    if target in RESERVED:
        raise ProgramError(f"{target!r} is reserved and cannot be assigned", line)
    rest = tokens[2:]
    if rest[0][0] == "name" and len(rest) > 1 and rest[1] == ("op", "("):
        op = rest[0][1]
        if op not in FUNCTIONS:
            raise ProgramError(f"unknown function {op!r}{_suggest(op)}", line)
        if FUNCTIONS[op].infix:
            raise ProgramError(f"write {op} as the infix operator {FUNCTIONS[op].infix!r}", line)
        args, i = [], 2
        while True:
            arg, i = _parse_arg(rest, i, line, defined)
            args.append(arg)
            if i >= len(rest):
                raise ProgramError(f"missing ')' in the call of {op}", line)
            if rest[i] == ("op", ")"):
                i += 1
                break
            if rest[i] != ("op", ","):
                raise ProgramError(f"expected ',' or ')' in the call of {op}, found {rest[i][1]!r}", line)
            i += 1
        if i != len(rest):
            raise ProgramError(f"unexpected {rest[i][1]!r} after the call of {op}", line)
        if len(args) != FUNCTIONS[op].arity:
            raise ProgramError(f"{op} takes {FUNCTIONS[op].arity} argument(s), got {len(args)}", line)
        return Statement(target, op, tuple(args))
    left, i = _parse_arg(rest, 0, line, defined)
    if i >= len(rest):
        raise ProgramError("a statement must apply a function (plain copies are not statements)", line)
    if rest[i][0] != "op" or rest[i][1] not in INFIX:
        raise ProgramError(f"expected an operator + - * /, found {rest[i][1]!r}", line)
    op = INFIX[rest[i][1]]
    right, j = _parse_arg(rest, i + 1, line, defined)
    if j != len(rest):
        raise ProgramError("one operation per statement", line)
    return Statement(target, op, (left, right))


def parse(text: str) -> Program:
    """Parse program text (see the module docstring); raises `ProgramError` naming the line."""
    if not isinstance(text, str):
        raise ProgramError(f"program text must be a string, got {type(text).__name__}")
    lines = [(n, raw.split("#", 1)[0]) for n, raw in enumerate(text.splitlines(), start=1)]
    lines = [(n, body) for n, body in lines if body.strip()]
    if not lines:
        raise ProgramError("empty program")
    number, header = lines[0]
    tokens = _tokens(header, number)
    names = [t[1] for t in tokens[3:-2:2]] if len(tokens) >= 5 else []
    expected = [("name", "def"), ("name", "train"), ("op", "(")]
    if tokens[:3] != expected or tokens[-2:] != [("op", ")"), ("op", ":")]:
        raise ProgramError("the first line must be `def train(w, g, m, v, lr):`", number)
    if tuple(names) not in (INPUTS, INPUTS + (STEP_INPUT,)) or any(t[1] != "," for t in tokens[4:-2:2]):
        raise ProgramError(f"the inputs must be ({', '.join(INPUTS)}) or ({', '.join(INPUTS)}, {STEP_INPUT})", number)
    uses_step = len(names) == len(INPUTS) + 1
    defined = set(names)
    statements = []
    for number, body in lines[1:-1]:
        statement = _parse_statement(_tokens(body, number), number, defined)
        statements.append(statement)
        defined.add(statement.target)
    number, last = lines[-1]
    tokens = _tokens(last, number)
    if len(lines) < 2 or not tokens or tokens[0] != ("name", "return"):
        raise ProgramError("the last line must be `return update, m, v`", number)
    returned = [t[1] for t in tokens[1::2]]
    if len(tokens) != 6 or any(t != ("op", ",") for t in tokens[2::2]) or any(t[0] != "name" for t in tokens[1::2]):
        raise ProgramError("return exactly three variables: the update and the next m and v", number)
    for name in returned:
        if name not in defined:
            raise ProgramError(f"returned variable {name!r} is never assigned", number)
    return Program(tuple(statements), tuple(returned), uses_step)

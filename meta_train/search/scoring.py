"""Fitness of optimizer programs: train a proxy task with each program, over seeds and a small
grid of learning-rate multipliers, and score by held-out loss.

    fitness(program) = mean over tasks of  log  min over lr multipliers  median over seeds
                       (test-split loss after `steps` steps)               (lower is better)

The best multiplier absorbs a wrongly scaled constant and the median over seeds resists a
lucky run. A run whose
loss is not finite, or whose parameters end larger than `max_param_abs` in magnitude, scores
+inf (an evolved program that blows the weights up to ~1e14 can otherwise drive a float32 loss
to exactly zero; the guard rejects such runs as diverged).

The scoring shared by the evaluators of `meta_train.search.fitness`: the training scan, the
score, the hurdle and the population in flight.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.programs.analysis import Graph
from lopt.meta_train.search.config import FitnessSpec, tail_steps


def train_scan(metric: str, count: int, task, loss_fn, params_of, apply_update, state, train_key: jax.Array):
    """Train `count` steps from `state` (`loss_fn(params_of(state), batch)`, then
    `apply_update(state, grads, t)` at the 1-based step t) in one `lax.scan`; returns the final
    state and, for the 'train' metric, the mean minibatch loss of the last `tail_steps(count)`
    steps (None for 'test'). The 'test' metric carries no loss sum, so its traced call is the one
    compile caches stored before the 'train' metric existed hold."""
    tail_from = count - tail_steps(count)

    def step(carry, inputs):
        state, *tail = carry
        t, k = inputs
        batch = task.batch(k, "train")
        if tail:
            loss, grads = jax.value_and_grad(loss_fn)(params_of(state), batch)
            tail = [tail[0] + jnp.where(t > tail_from, loss, 0.0)]
        else:
            grads = jax.grad(loss_fn)(params_of(state), batch)
        return (apply_update(state, grads, t), *tail), None

    carry = (state, jnp.zeros(())) if metric == "train" else (state,)
    steps = jnp.arange(1, count + 1, dtype=jnp.float32)
    (state, *tail), _ = jax.lax.scan(step, carry, (steps, jax.random.split(train_key, count)))
    return state, (tail[0] / tail_steps(count) if tail else None)


def keys_of(spec: FitnessSpec, task_name: str) -> jax.Array:
    """The seeds' keys of one task (the same for every program and evaluator)."""
    root = jax.random.fold_in(jax.random.key(spec.seed), zlib.crc32(task_name.encode()))
    return jax.random.split(root, spec.seeds)


def task_scores(losses: np.ndarray) -> np.ndarray:
    """losses [..., lrs, seeds] of one task -> log(min over lrs of the median over seeds), +inf
    where that is not finite."""
    losses = np.where(np.isfinite(losses), losses, np.inf)
    best = np.min(np.median(losses, axis=-1), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.log(np.maximum(best, 1e-30))
    return np.where(np.isfinite(logged), logged, np.inf)


class Hurdle:
    """The quality rejection of `FitnessSpec.hurdle`, shared by the evaluators: which programs go
    on past the first task, and how many did not."""

    def __init__(self, spec: FitnessSpec, evaluate_first) -> None:
        self.spec = spec
        self._evaluate_first = evaluate_first  # graphs -> [programs, lrs, seeds] losses on task 0
        self.reference: float | None = None
        self.rejected = 0
        self.last_kept = np.ones(0, bool)  # the last call's survivors

    def set_reference(self, graph: Graph) -> float:
        """Score `graph` (the search's seed) on the first task: the hurdle's reference."""
        self.reference = float(task_scores(self._evaluate_first([graph]))[0])
        return self.reference

    def survivors(self, first: np.ndarray) -> np.ndarray:
        """[programs] bool: which go on, given their first-task losses [programs, lrs, seeds]."""
        keep = np.ones(first.shape[0], bool)
        if self.spec.hurdle and self.reference is not None and len(self.spec.tasks) > 1:
            keep = task_scores(first) <= self.reference + self.spec.hurdle
            self.rejected += int(np.sum(~keep))
        self.last_kept = keep
        return keep


def score(losses: np.ndarray) -> np.ndarray:
    """losses [..., tasks, lrs, seeds] -> fitness [...]: mean over tasks of log(min over lrs of the
    median over seeds); non-finite runs count as +inf."""
    per_task = task_scores(losses)
    return np.where(np.all(np.isfinite(per_task), axis=-1), per_task.mean(axis=-1), np.inf)


def padded_batch(count: int, batch: int) -> int:
    """Programs a compiled call holds for `count` programs: the next power of two, at least a
    quarter of `batch` and at most `batch` (a partial batch — a generation's remainder, the
    hurdle's survivors, the programs with tree-level statements — would otherwise train as many
    padding copies as programs; three sizes at most compile per task)."""
    return min(batch, max(batch // 4, 1, 1 << max(count - 1, 0).bit_length()))


class Staged:
    """One population's losses in flight, so a search can mutate the next generation while the
    device trains this one: the first task is dispatched at construction; `advance()` reads it,
    applies the hurdle and dispatches the other tasks for the survivors; `losses()` reads those
    ([programs, tasks, lrs, seeds], +inf on the tasks after the first for the programs the hurdle
    stopped). `dispatch(graphs, task)` starts a task's runs and returns what reads their
    [programs, lrs, seeds] losses (blocking there, not at the dispatch)."""

    def __init__(self, spec: FitnessSpec, hurdle: Hurdle, graphs: Sequence[Graph], dispatch) -> None:
        self.spec, self._hurdle, self._graphs, self._dispatch = spec, hurdle, list(graphs), dispatch
        self.out = np.full((len(graphs), len(spec.tasks), len(spec.lr_multipliers), spec.seeds), np.inf, np.float32)
        self.kept = np.ones(len(graphs), bool)  # which went on past the first task
        self._first = dispatch(self._graphs, 0) if self._graphs else None
        self._rest: list[tuple[int, np.ndarray, object]] = []

    def advance(self) -> None:
        """Read the first task (blocking until it is trained) and dispatch the others."""
        if self._first is None:
            return
        self.out[:, 0], self._first = self._first(), None
        self.kept = self._hurdle.survivors(self.out[:, 0])
        alive = np.flatnonzero(self.kept)
        if len(alive):
            self._rest = [
                (t, alive, self._dispatch([self._graphs[i] for i in alive], t)) for t in range(1, len(self.spec.tasks))
            ]

    def losses(self) -> np.ndarray:
        """[programs, tasks, lrs, seeds]: every task read (blocking until trained)."""
        self.advance()
        for t, alive, read in self._rest:
            self.out[alive, t] = read()
        self._rest = []
        return self.out

"""The evaluators of optimizer programs (fitness and its hurdle: `meta_train.search.scoring`).

Two evaluators with identical numbers: "batched" runs the whole population as data through one
compiled interpreter (`lopt.programs.batched.run_encoded` under `vmap`); "jit" compiles each
program through `to_optax` (one compile per unique program). `benchmarks/search_throughput.py`
measures both.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import jax
from jax import export as jax_export  # explicit: jax 0.7 does not load it on `import jax`
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lopt.config import from_dict
from lopt.programs.analysis import Graph, check, from_graph
from lopt.programs.lang import parse
from lopt.programs.interpret import to_optax
from lopt.programs.optimizer import lr_schedule
from lopt.programs.batched import (
    MATRIX_ROUND,
    ROUND,
    Encoded,
    encode,
    encode_population,
    layout_of,
    rounds_needed,
    run_encoded,
    run_unrolled,
    stack_encoded,
    uses_matrix,
)
from lopt.programs.kernel import run_kernel, uses_tree
from lopt.meta_train.search.config import FitnessSpec
from lopt.meta_train.search.store import LoweredStore, default_lowered_dir, lower_in_workers
from lopt.tasks import build, task_spec
from lopt.tasks.train import evaluate
from lopt.meta_train.search.scoring import Hurdle, Staged, keys_of, padded_batch, score, train_scan


@functools.cache
def _example_graph() -> Graph:
    """A one-statement program: encodable with any number of rounds (a compile's example)."""
    return check(parse("def train(w, g, m, v, lr):\n  update = g * lr\n  return update, m, v\n"))


_FROM_JAX_CONFIG = object()  # BatchedEvaluator's default store: default_lowered_dir()


def _spec_record(spec: FitnessSpec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec)))


class BatchedEvaluator:
    """One compiled call per (task, batch of programs).

    step: what computes a step from (program, w, g, m, v, lr, t, sizes); the interpreter, or for
    `benchmarks/search_throughput.py`'s floor a fixed optimizer that ignores the program.
    lowered_dir: the folder of a `store.LoweredStore` (lowered calls read back by a later process);
    default `store.default_lowered_dir()`, None for no store. Only the library's own steps are
    stored (a custom `step` is not part of the key). platform: the one calls are lowered for
    (default: this process's; the lowering workers of `precompile` lower for the parent's)."""

    def __init__(
        self,
        spec: FitnessSpec,
        step=run_encoded,
        *,
        kernel: bool = False,
        lowered_dir: Path | str | None | object = _FROM_JAX_CONFIG,
        platform: str | None = None,
    ):
        self.spec = spec
        self._step = step
        self._kernel = kernel
        self._platform = platform or jax_export.default_export_platform()
        lowered_dir = default_lowered_dir() if lowered_dir is _FROM_JAX_CONFIG else lowered_dir
        record = {"spec": _spec_record(spec), "platform": self._platform, "step": step.__name__}
        self._store = (
            LoweredStore(lowered_dir, record)
            if lowered_dir is not None and step in (run_encoded, run_unrolled)
            else None
        )
        self._executables: dict[tuple[str, int, str, int], object] = {}
        self._lock = threading.Lock()
        self.compile_seconds = 0.0  # spent compiling population calls (in every thread)
        self.hurdle = Hurdle(spec, lambda graphs: self._task_losses(graphs, 0))

    def _kinds(self) -> tuple[str, ...]:
        return ("kernel", "kernel-tree") if self._kernel else ("step",)

    def _kind(self, graph: Graph) -> str:
        """Which compiled step runs `graph` (one of `_kinds`, or 'step-matrix': programs with matrix
        functions run the scan interpreter in `MATRIX_ROUND`s, in batches of their own, also
        beside the kernel, which has no matrix slot)."""
        if uses_matrix(graph):
            return "step-matrix"
        return ("kernel-tree" if uses_tree(graph) else "kernel") if self._kernel else "step"

    def _executable(self, task_name: str, rounds: int, kind: str, count: int):
        """The compiled population call for a task, a number of rounds of slots (a batch is encoded
        with the most rounds any of its programs needs, since every slot costs a pass per function
        of its group), the step ('step': the evaluator's; 'step-matrix': the same in matrix rounds,
        or `run_encoded` beside the kernel; 'kernel': `run_kernel`; 'kernel-tree': `run_kernel`
        with its tree passes) and a padded batch size; compiled when first asked for."""
        key = (task_name, rounds, kind, count)
        if key not in self._executables:
            start = time.perf_counter()
            compiled = self._lower(*key).compile()
            with self._lock:
                self.compile_seconds += time.perf_counter() - start
                self._executables.setdefault(key, compiled)
        return self._executables[key]

    @staticmethod
    def _example(rounds: int, count: int, kind: str = "step"):
        layout = MATRIX_ROUND if kind == "step-matrix" else ROUND
        return jax.tree.map(jnp.asarray, stack_encoded([encode(_example_graph(), rounds, layout=layout)] * count))

    def _traced(self, task_name: str, rounds: int, kind: str, count: int):
        """The population call for a key, traced (not yet lowered)."""
        interpret = self._platform not in ("cuda", "rocm")
        steps = {
            "step": self._step,
            "kernel": functools.partial(run_kernel, interpret=interpret),
            "kernel-tree": functools.partial(run_kernel, tree=True, interpret=interpret),
            "step-matrix": run_encoded if self._kernel else self._step,
        }
        return self._build(task_name, steps[kind]), self._example(rounds, count, kind)

    def lowered_path(self, task_name: str, rounds: int, kind: str, count: int) -> Path | None:
        """Where the lowered call for a key is stored (None without a store)."""
        return None if self._store is None else self._store.path((task_name, rounds, kind, count))

    def store_lowered(self, task_name: str, rounds: int, kind: str, count: int):
        """Lower a key's call and store it; returns the `jax.export.Exported`."""
        fn, example = self._traced(task_name, rounds, kind, count)
        # Over the Encoded fields as plain arguments (a serialized tree holds registered types only).
        exported = jax_export.export(
            jax.jit(lambda *fields: fn(Encoded(*fields))),
            platforms=[self._platform],
            disabled_checks=[jax_export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(*example)
        self._store.write((task_name, rounds, kind, count), exported)
        return exported

    def _lower(self, task_name: str, rounds: int, kind: str, count: int):
        """The key's call lowered: read back from the store when it is there (a file that does not
        deserialize is lowered again and replaced), else traced, lowered and stored."""
        if self._store is None:
            fn, example = self._traced(task_name, rounds, kind, count)
            return fn.lower(example)
        exported = self._store.read((task_name, rounds, kind, count))
        if exported is None:
            exported = self.store_lowered(task_name, rounds, kind, count)
        return jax.jit(lambda encoded: exported.call(*encoded)).lower(self._example(rounds, count, kind))

    def _lower_elsewhere(self, keys: list[tuple[str, int, str, int]], workers: int) -> None:
        """Lower and store `keys` in `workers` processes (`store.lower_in_workers`)."""
        request = {
            "spec": _spec_record(self.spec),
            "step": self._step.__name__,
            "kernel": self._kernel,
            "platform": self._platform,
            "lowered_dir": str(self._store.directory),
        }
        lower_in_workers(request, keys, workers, self._platform)

    def precompile(self, rounds: Sequence[int], workers: int | None = None, matrix: bool = False) -> int:
        """Compile ahead, in `workers` threads (XLA compiles outside the GIL), the population calls
        for every task, kind, number of `rounds` and padded batch size; returns how many. `matrix`
        adds the calls of programs with matrix functions ('step-matrix'), which a search in the
        matrix space meets from its first generation: left to compile when first met, they took
        74% of a 15-generation H100 search's 414 s (2026-12-07). With a
        store (`lowered_dir`), the calls not stored yet are first lowered in as many worker processes
        (at most `workers`): on the GPU search's 24 shapes the lowering, in Python, took longer than
        the compiles."""
        sizes = sorted({padded_batch(n, self.spec.batch) for n in range(1, self.spec.batch + 1)})
        keys = [
            (t, r, k, n)
            for t in self.spec.tasks
            for r in rounds
            for k in (*self._kinds(), *(("step-matrix",) if matrix else ()))
            for n in sizes
            if (t, r, k, n) not in self._executables
        ]
        threads = workers or min(len(keys), os.cpu_count() or 1) or 1
        missing = [] if self._store is None else self._store.missing(keys)
        if len(missing) > 1:
            start = time.perf_counter()
            self._lower_elsewhere(missing, min(len(missing), threads))
            with self._lock:
                self.compile_seconds += time.perf_counter() - start
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda key: self._executable(*key), keys))
        return len(keys)

    def _build(self, task_name: str, interpret_step):
        spec = self.spec
        task = build(task_spec(task_name))
        example = task.init(jax.random.key(0))
        _, unravel = ravel_pytree(example)
        sizes = tuple(tuple(leaf.shape) for leaf in jax.tree.leaves(example))  # matrix functions read shapes
        keys = keys_of(spec, task_name)
        lrs = jnp.asarray(spec.task_lrs(task_name), jnp.float32)

        steps = spec.task_steps(task_name)

        def one_run(program, lr, key):
            init_key, train_key, eval_key = jax.random.split(key, 3)
            params, _ = ravel_pytree(task.init(init_key))
            loss_fn = lambda p, batch: task.loss(unravel(p), batch)  # noqa: E731

            schedule = lr_schedule(lr, spec.schedule, steps)  # the lr input, or its function of the step

            def apply_update(state, grads, t):
                p, m, v = state
                rate = schedule(t - 1.0) if callable(schedule) else schedule
                update, m, v = interpret_step(program, p, grads, m, v, rate, t, sizes)
                return p - update, m, v

            zeros = jnp.zeros_like(params)
            (params, _, _), train_loss = train_scan(
                spec.metric, steps, task, loss_fn, lambda s: s[0], apply_update, (params, zeros, zeros), train_key
            )
            loss = evaluate(task, unravel(params), eval_key, spec.eval_batches) if train_loss is None else train_loss
            return jnp.where(jnp.max(jnp.abs(params)) <= spec.max_param_abs, loss, jnp.inf)

        over_seeds = jax.vmap(one_run, in_axes=(None, None, 0))
        over_lrs = jax.vmap(over_seeds, in_axes=(None, 0, None))
        over_programs = jax.vmap(over_lrs, in_axes=(0, None, None))
        return jax.jit(lambda programs: over_programs(programs, lrs, keys))

    def _dispatch(self, graphs: Sequence[Graph], task: int):
        """Start one task's runs in fixed-shape batches (with `kernel`, programs with tree-level
        statements in batches of their own: their kernel makes a pass per round); returns what
        reads the [programs, lrs, seeds] final test losses. Every call is dispatched before any
        result is read, so the host encodes the next batch while the device trains this one.

        Programs are batched in order of the rounds they need (a batch runs as many rounds as its
        longest program: a few 3-round programs would otherwise make every batch of 2-round ones
        pay a third), and a batch is encoded with at least the fewest precompiled rounds (empty
        slots cost less than a compile)."""
        spec = self.spec
        kinds: dict[str, list[int]] = {}
        for i, g in enumerate(graphs):
            kinds.setdefault(self._kind(g), []).append(i)
        pending = []
        for kind, indices in kinds.items():
            indices = sorted(indices, key=lambda i: rounds_needed(graphs[i]))
            for start in range(0, len(indices), spec.batch):
                chunk = indices[start : start + spec.batch]
                count = padded_batch(len(chunk), spec.batch)
                batch = jax.tree.map(
                    jnp.asarray,
                    encode_population(
                        [graphs[i] for i in chunk], count, spec.length, min_rounds=min(spec.precompile, default=1)
                    ),
                )
                rounds = batch.op.shape[1] // len(layout_of(batch))
                pending.append((chunk, self._executable(spec.tasks[task], rounds, kind, count)(batch)))

        def read() -> np.ndarray:
            out = np.zeros((len(graphs), len(spec.lr_multipliers), spec.seeds), np.float32)
            for chunk, losses in pending:
                out[chunk] = np.asarray(losses)[: len(chunk)]
            return out

        return read

    def _task_losses(self, graphs: Sequence[Graph], task: int) -> np.ndarray:
        """[programs, lrs, seeds] final test losses on one task."""
        return self._dispatch(graphs, task)()

    def start(self, graphs: Sequence[Graph]) -> Staged:
        """The population's runs in flight (`Staged`): the first task dispatched."""
        return Staged(self.spec, self.hurdle, graphs, self._dispatch)

    def losses(self, graphs: Sequence[Graph]) -> np.ndarray:
        """[programs, tasks, lrs, seeds] final test losses (+inf on the tasks after the first
        for programs the hurdle stops)."""
        return self.start(graphs).losses()

    def __call__(self, graphs: Sequence[Graph]) -> np.ndarray:
        return score(self.losses(graphs))


class JitEvaluator:
    """One compile per program: the program through `to_optax`, vmapped over lrs × seeds."""

    compile_seconds = 0.0  # not counted: every program compiles its own runs

    def __init__(self, spec: FitnessSpec):
        self.spec = spec
        self._tasks = {name: build(task_spec(name)) for name in spec.tasks}
        self.hurdle = Hurdle(spec, lambda graphs: self._task_losses(graphs, 0))

    def precompile(self, rounds: Sequence[int], workers: int | None = None, matrix: bool = False) -> int:
        """Nothing to compile ahead: the calls depend on each program."""
        return 0

    def _one(self, graph: Graph, task_name: str) -> np.ndarray:
        spec, task = self.spec, self._tasks[task_name]
        program = from_graph(graph)
        keys = keys_of(spec, task_name)

        def one_run(lr, key):
            init_key, train_key, eval_key = jax.random.split(key, 3)
            opt = to_optax(program, lr_schedule(lr, spec.schedule, spec.task_steps(task_name)))
            params = task.init(init_key)

            def apply_update(state, grads, t):
                params, opt_state = state
                updates, opt_state = opt.update(grads, opt_state, params)
                return jax.tree.map(jnp.add, params, updates), opt_state

            (params, _), train_loss = train_scan(
                spec.metric,
                spec.task_steps(task_name),
                task,
                task.loss,
                lambda s: s[0],
                apply_update,
                (params, opt.init(params)),
                train_key,
            )
            loss = evaluate(task, params, eval_key, spec.eval_batches) if train_loss is None else train_loss
            largest = jnp.max(jnp.stack([jnp.max(jnp.abs(p)) for p in jax.tree.leaves(params)]))
            return jnp.where(largest <= spec.max_param_abs, loss, jnp.inf)

        run = jax.jit(jax.vmap(jax.vmap(one_run, in_axes=(None, 0)), in_axes=(0, None)))
        return np.asarray(run(jnp.asarray(spec.task_lrs(task_name), jnp.float32), keys))

    def _task_losses(self, graphs: Sequence[Graph], task: int) -> np.ndarray:
        return np.stack([self._one(g, self.spec.tasks[task]) for g in graphs])

    def start(self, graphs: Sequence[Graph]) -> Staged:
        """As `BatchedEvaluator.start`, but each task trains when dispatched (one compile per program)."""

        def dispatch(gs: Sequence[Graph], task: int):
            losses = self._task_losses(gs, task)
            return lambda: losses

        return Staged(self.spec, self.hurdle, graphs, dispatch)

    def losses(self, graphs: Sequence[Graph]) -> np.ndarray:
        return self.start(graphs).losses()

    def __call__(self, graphs: Sequence[Graph]) -> np.ndarray:
        return score(self.losses(graphs))


def evaluator(spec: FitnessSpec) -> BatchedEvaluator | JitEvaluator:
    """The evaluator `spec.interpreter` names ('auto' is 'batched'; FitnessSpec admits only
    INTERPRETERS)."""
    make = {
        "auto": BatchedEvaluator,
        "batched": BatchedEvaluator,
        "jit": JitEvaluator,
        "unrolled": lambda s: BatchedEvaluator(s, run_unrolled),
        "kernel": lambda s: BatchedEvaluator(s, kernel=True),
    }
    return make[spec.interpreter](spec)


def _lowering_worker() -> None:
    """`python -m lopt.meta_train.search.fitness` (`store.lower_in_workers`): read one JSON request
    from stdin (a spec, the step, whether the kernel runs, the platform, the store and the keys)
    and store each key's lowered call."""
    request = json.loads(sys.stdin.read())
    step = {"run_encoded": run_encoded, "run_unrolled": run_unrolled}[request["step"]]
    evaluator = BatchedEvaluator(
        from_dict(FitnessSpec, request["spec"], where="lowering request"),
        step,
        kernel=request["kernel"],
        lowered_dir=request["lowered_dir"],
        platform=request["platform"],
    )
    for task_name, rounds, kind, count in request["keys"]:
        evaluator.store_lowered(task_name, rounds, kind, count)


if __name__ == "__main__":
    _lowering_worker()

"""The search's store of lowered population calls: `jax.export` modules (a versioned
serialization, not a pickle) keyed by everything a call depends on, so a later process compiles
without tracing and lowering again (and, with JAX's persistent cache, without compiling), and
the worker processes that fill it in parallel.

JAX's own cache keeps only the XLA compile; a search resumed in a new process otherwise traces
and lowers every call shape again, in Python (docs/benchmarks.md has what that cost on a GPU).
Files are written and read through `lopt.cache_files` (written to a temporary file and renamed;
read only from a folder lopt made private).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from jax import export as jax_export  # explicit: jax 0.7 does not load it on `import jax`

from lopt import cache_files
from lopt.meta_train.search.mutation import worker_env

# What a lowered population call depends on besides the spec and its shape: the interpreter, the
# kernel, the tasks and the evaluator (modules, or packages with all their modules). A change to
# any of their files makes every stored lowering stale.
LOWERING_SOURCES = (
    "lopt.programs",
    "lopt.learned.kernels",
    "lopt.tasks",
    "lopt.meta_train.search.fitness",
    "lopt.meta_train.search.scoring",
)
Key = tuple[str, int, str, int]  # (task, rounds of slots, kind of step, padded batch size)


@functools.cache
def source_digest() -> str:
    """sha256 over the files of `LOWERING_SOURCES` (module names and bytes), wherever the
    modules are installed."""
    digest = hashlib.sha256()
    for name in LOWERING_SOURCES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the search's lowering store cannot find module {name}")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if spec.submodule_search_locations else [origin]
        for file in files:
            label = f"{name}/{file.relative_to(origin.parent).as_posix()}"
            digest.update(label.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def default_lowered_dir() -> Path | None:
    """Where population calls are kept lowered: `lopt-lowered/` inside JAX's persistent compilation
    cache when one is set (`JAX_COMPILATION_CACHE_DIR`), else nowhere."""
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / "lopt-lowered" if cache else None


class LoweredStore:
    """One folder of lowered calls for one evaluator: `record` (the spec as JSON, the platform
    and the step's name) and the key name a file, with jax's version and `source_digest()`."""

    def __init__(self, directory: Path | str, record: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.record = record

    def path(self, key: Key) -> Path:
        named = {**self.record, "key": list(key), "jax": jax.__version__, "sources": source_digest()}
        name = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:40]
        return self.directory / f"{name}.jaxexport"

    def read(self, key: Key) -> Any:
        """The stored `jax.export.Exported`, or None: not stored, not in a folder lopt made
        private, or not deserializable (written by another jax version)."""
        data = cache_files.read_verified(self.path(key))
        if data is None:
            return None
        try:
            return jax_export.deserialize(bytearray(data))
        except Exception:  # noqa: BLE001 - any undeserializable file is lowered again and replaced
            return None

    def write(self, key: Key, exported: Any) -> None:
        """Store `exported` (a shared, untrusted folder is left alone: the call is lowered here)."""
        try:
            cache_files.write_verified(self.path(key), bytes(exported.serialize()))
        except cache_files.UntrustedCache:
            pass

    def missing(self, keys: Sequence[Key]) -> list[Key]:
        return [key for key in keys if not self.path(key).is_file()]


def lower_in_workers(request: dict[str, Any], keys: Sequence[Key], workers: int, platform: str) -> None:
    """Lower and store `keys` in `workers` processes (`python -m lopt.meta_train.search.fitness`, each
    given `request` and its share of the keys as JSON on stdin), whose Python-side tracing and
    lowering then run in parallel instead of behind one GIL. A failing worker's last line of
    stderr is raised as a RuntimeError."""
    # For the CPU, the workers run on the CPU. For a GPU they see it (Pallas' Triton lowering reads the
    # device's compute capability) without taking its memory: they only lower, and the parent holds it.
    env = worker_env(**({"JAX_PLATFORMS": "cpu"} if platform == "cpu" else {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}))
    processes = []
    for share in [list(keys[i::workers]) for i in range(workers)]:
        errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty worker never blocks on it
        process = subprocess.Popen(
            [sys.executable, "-m", "lopt.meta_train.search.fitness"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=env,
            text=True,
        )
        process.stdin.write(json.dumps({**request, "keys": share}))
        process.stdin.close()
        processes.append((process, errors))
    failures = []
    for process, errors in processes:
        if process.wait() != 0:
            errors.seek(0)
            lines = errors.read().strip().splitlines()
            failures.append(lines[-1] if lines else f"exit status {process.returncode}")
        errors.close()
    if failures:
        raise RuntimeError(f"a lowering worker failed: {failures[0]}")

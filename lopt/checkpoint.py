"""Save and load trained optimizers: orbax arrays plus a JSON manifest. Never pickle.

A checkpoint directory holds
    manifest.json   format and version, the optimizer's kind and constructor arguments, every
                    theta array's path, shape, dtype and SHA-256, and provenance
    theta/          the arrays, written by orbax's StandardCheckpointer

Loading checks, before any array is trusted: the manifest parses and its format version is not
newer than this lopt's; the kind is known and its arguments fit its constructor; the stored
arrays match what that optimizer's `init_meta` expects (same paths, shapes, dtypes); and every
restored array's SHA-256 matches the manifest. Any failure raises `CheckpointError` naming the
problem. Saving writes into a temporary sibling directory and renames it into place, so an
interrupted save never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import hashlib
import importlib
import inspect
import json
import os
import shutil
import stat
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from lopt.config import describe_error
from lopt.learned.base import KINDS, from_config, to_config

FORMAT = "lopt-optimizer"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
THETA_DIR = "theta"
QUIET_WAIT_S = 2.0  # longest wait for a failed restore's late TensorStore callbacks


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded as written; the message names the problem and path."""


def _path_name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def describe_arrays(theta: Any) -> list[dict[str, Any]]:
    """[{path, shape, dtype, sha256}] for every array of `theta`, in tree order."""
    entries = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        array = np.asarray(leaf)
        entries.append(
            {
                "path": _path_name(path),
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
            }
        )
    return entries


def save(
    path: str | Path,
    meta_optimizer: Any,
    theta: Any,
    meta: dict[str, Any] | None = None,
    *,
    num_steps: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `theta` and a manifest describing `meta_optimizer` to directory `path`.

    meta: provenance (config, estimator, outer steps, ...), stored as JSON.
    num_steps: the training length `lopt.load` assumes when none is given.
    """
    path = Path(path).absolute()
    for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(theta):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(
                f"theta{jax.tree_util.keystr(leaf_path)} holds non-finite values (NaN or inf); "
                "lopt saves only finite meta-parameters"
            )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.exists() and not is_lopt_checkpoint(path):
        raise FileExistsError(
            f"{path} exists and is not a lopt optimizer checkpoint exactly as lopt wrote it (a manifest that "
            "validates, its theta/ arrays as saved and nothing else); lopt replaces only its own"
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": meta_optimizer.kind,
        "config": saved_config(meta_optimizer),
        "num_steps": num_steps,
        "arrays": describe_arrays(theta),
        "provenance": {
            **(meta or {}),
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "jax_version": jax.__version__,
        },
    }
    text = json.dumps(manifest, indent=2, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / THETA_DIR, jax.tree.map(jnp.asarray, theta))
        checkpointer.wait_until_finished()
        # what lopt wrote under theta/, so that an overwrite can tell its own files from a user's
        manifest["files"] = _listing(staging / THETA_DIR)
        text = json.dumps(manifest, indent=2, default=str)
        (staging / MANIFEST).write_text(text)
        if path.exists():
            retired = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, retired)
            os.rename(staging, path)
            shutil.rmtree(retired)
        else:
            os.rename(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path


def _listing(root: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under `root` (sorted)."""
    return {str(f.relative_to(root)): f.stat().st_size for f in sorted(root.rglob("*")) if f.is_file()}


def check_plain_tree(path: Path) -> None:
    """Raise CheckpointError unless everything under `path` is a regular file or a directory (a
    FIFO, socket or device would block or misbehave when read; a link may point anywhere)."""
    for entry in [path, *path.rglob("*")]:
        mode = entry.lstat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or directory"
            raise CheckpointError(f"{entry}: {kind}; a checkpoint holds only plain files and directories")


def is_lopt_checkpoint(path: Path) -> bool:
    """Whether `path` is exactly a checkpoint lopt.save wrote: a manifest that validates, a
    theta/ directory, nothing else at the top, only plain files and directories, and (for
    checkpoints that record it) exactly the files lopt wrote under theta/. Only such a folder may
    be replaced by `save(..., overwrite=True)`."""
    try:
        if not path.is_dir() or path.is_symlink() or {e.name for e in path.iterdir()} != {MANIFEST, THETA_DIR}:
            return False
        check_plain_tree(path)
        manifest = read_manifest(path)
        files = manifest.get("files")
        return files is None or files == _listing(path / THETA_DIR)
    except (OSError, ValueError, AttributeError, RecursionError, CheckpointError):
        return False


def _remove_leftovers(path: Path) -> None:
    """Staging and retired copies of `path` that an earlier, killed save left behind (only the
    names lopt.save itself makes: `.<name>.tmp-<8 hex>` and `.<name>.old-<8 hex>`)."""
    for leftover in path.parent.glob(f".{path.name}.*-*"):
        tag, _, suffix = leftover.name[len(path.name) + 2 :].partition("-")
        if tag in ("tmp", "old") and len(suffix) == 8 and all(c in "0123456789abcdef" for c in suffix):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def shipped_dir() -> Path | None:
    """Where the shipped optimizers live: the installed `lopt.shipped` package data, or the
    repository's checkpoints/ folder in a source checkout."""
    try:
        for entry in importlib.import_module("lopt.shipped").__path__:  # a namespace package
            if Path(entry).is_dir():
                return Path(entry)
    except ModuleNotFoundError:
        pass
    local = Path(__file__).resolve().parents[1] / "checkpoints"
    return local if local.is_dir() else None


def shipped() -> list[str]:
    """Names of the optimizers shipped with lopt (`lopt.load(name)` loads them)."""
    root = shipped_dir()
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root else []


def resolve(path: str | Path) -> Path:
    """A checkpoint directory: `path` itself if it exists (a finished search's folder: the program
    it shipped, in its `program/`), else a shipped optimizer named `path` (also accepted as
    "checkpoints/<name>", the repository path)."""
    candidate = Path(path)
    if candidate.exists():
        shipped_program = candidate / "program"
        if not (candidate / MANIFEST).exists() and (shipped_program / MANIFEST).is_file():
            return shipped_program
        return candidate
    name = candidate.name if candidate.parent.name == "checkpoints" or candidate.parent == Path(".") else None
    if name in (".", ".."):
        name = None
    root = shipped_dir()
    if name and root is not None and (root / name / MANIFEST).is_file():
        return root / name
    return candidate


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of checkpoint `path` (a directory or a shipped name), validated for format
    and version."""
    path = resolve(path)
    file = path / MANIFEST
    if not path.is_dir():
        names = ", ".join(shipped()) or "none"
        raise CheckpointError(f"{path}: no such checkpoint directory (shipped optimizers: {names})")
    if not file.is_file():
        raise CheckpointError(f"{path}: missing {MANIFEST}")
    check_plain_tree(path)
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: manifest is not valid JSON ({error})") from error
    except RecursionError:
        raise CheckpointError(f"{file}: manifest is nested too deeply") from None
    if _depth(manifest) > MAX_MANIFEST_DEPTH:
        raise CheckpointError(f"{file}: manifest is nested deeper than {MAX_MANIFEST_DEPTH} levels")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: not a lopt optimizer manifest (format {manifest.get('format')!r})"
            if isinstance(manifest, dict)
            else f"{file}: not a lopt optimizer manifest"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format version {version!r} is newer than this lopt reads ({FORMAT_VERSION}); upgrade lopt"
        )
    for key in ("kind", "config", "arrays"):
        if key not in manifest:
            raise CheckpointError(f"{file}: manifest lacks {key!r}")
    _check_schema(manifest, file)
    return manifest


MAX_MANIFEST_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_MANIFEST_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def _check_schema(manifest: dict[str, Any], file: Path) -> None:
    """Types of the manifest's fields, so a hand-edited file fails here with its key named."""

    def fail(what: str) -> None:
        raise CheckpointError(f"{file}: {what}")

    if not isinstance(manifest["kind"], str):
        fail("'kind' must be a string")
    if not isinstance(manifest["config"], dict):
        fail("'config' must be a table")
    num_steps = manifest.get("num_steps")
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps <= 0):
        fail(f"'num_steps' must be a positive whole number or null, got {str(num_steps)[:40]!r}")
    if not isinstance(manifest["arrays"], list):
        fail("'arrays' must be a list of array entries")
    files = manifest.get("files")
    if files is not None and not (
        isinstance(files, dict)
        and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in files.items())
    ):
        fail("'files' must be a table of file names and sizes")
    for i, entry in enumerate(manifest["arrays"]):
        if not isinstance(entry, dict):
            fail(f"arrays[{i}] must be a table")
        for key, kind in (("path", str), ("dtype", str), ("sha256", str), ("shape", list)):
            if not isinstance(entry.get(key), kind):
                fail(f"arrays[{i}] lacks a {kind.__name__} {key!r}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"]):
            fail(f"arrays[{i}].shape must be non-negative whole numbers")


def _check_against_expected(manifest: dict[str, Any], expected: list[dict[str, Any]], where: Path) -> None:
    stored = {entry["path"]: entry for entry in manifest["arrays"]}
    wanted = {entry["path"]: entry for entry in expected}
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing:
        raise CheckpointError(f"{where}: missing array(s) {', '.join(missing)} for kind {manifest['kind']!r}")
    if extra:
        raise CheckpointError(f"{where}: unexpected array(s) {', '.join(extra)} for kind {manifest['kind']!r}")
    for name, entry in wanted.items():
        if list(stored[name]["shape"]) != entry["shape"] or stored[name]["dtype"] != entry["dtype"]:
            raise CheckpointError(
                f"{where}: array {name} is {stored[name]['dtype']}{stored[name]['shape']}, "
                f"but this optimizer's config expects {entry['dtype']}{entry['shape']}"
            )


@contextlib.contextmanager
def quiet_failed_reads() -> Iterator[None]:
    """Collect, silently, the read coroutines orbax leaves behind when one array fails.

    When one array of a restore cannot be read, orbax raises from the first failure and drops the
    other pending reads; Python reports each dropped coroutine through `sys.unraisablehook` when
    it is collected, and their TensorStore callbacks then find orbax's event loop closed — dozens
    of lines after the one error that matters. The hook is swapped only while the restore runs
    and the garbage it left is collected.
    """
    previous = sys.unraisablehook
    swallowed = [0]

    def hook(report: Any) -> None:
        dropped_read = inspect.iscoroutine(report.object) and report.exc_type in (GeneratorExit, Exception)
        # TensorStore callbacks of the dropped reads then find orbax's event loop closed
        late_callback = report.exc_type is RuntimeError and str(report.exc_value) == "Event loop is closed"
        if dropped_read or late_callback:
            swallowed[0] += 1
        else:
            previous(report)

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings():  # collected, the dropped reads also warn "never awaited"
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            try:
                yield
            except BaseException:
                # The late callbacks arrive from TensorStore's threads after the restore raised:
                # wait (failure path only, at most `QUIET_WAIT_S`) until none came for a while.
                deadline, seen, still = time.monotonic() + QUIET_WAIT_S, -1, 0
                while time.monotonic() < deadline and still < 4:
                    gc.collect()
                    still, seen = (still + 1, seen) if swallowed[0] == seen else (0, swallowed[0])
                    time.sleep(0.05)
                raise
            finally:
                gc.collect()
    finally:
        sys.unraisablehook = previous


def load_meta(path: str | Path, *, kernel: str | None = None) -> tuple[Any, Any]:
    """(meta_optimizer, theta) from checkpoint `path`, for use or for further meta-training
    (`kernel` as in `load`)."""
    meta_optimizer, theta, _ = _load(path, kernel=kernel)
    return meta_optimizer, theta


RUNTIME_FIELDS = ("kernel",)  # how an optimizer runs, not what it computes: never saved


def saved_config(meta_optimizer: Any) -> dict[str, Any]:
    """The constructor arguments a checkpoint records: those of the rule, without RUNTIME_FIELDS."""
    return {k: v for k, v in to_config(meta_optimizer).items() if k not in RUNTIME_FIELDS}


def _load(path: str | Path, kernel: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(meta_optimizer, theta, manifest) of checkpoint `path`, the manifest read once. A runtime
    field an older checkpoint recorded (its `kernel`) is replaced by `kernel` or the default."""
    path = resolve(path).absolute()
    manifest = read_manifest(path)
    config = {k: v for k, v in manifest["config"].items() if k not in RUNTIME_FIELDS}
    if manifest["kind"] in KINDS:
        array_paths = [entry.get("path") for entry in manifest.get("arrays", [])]
        config = KINDS[manifest["kind"]].upgrade_saved_config(config, array_paths)
    try:
        meta_optimizer = from_config(manifest["kind"], config)
        if kernel is not None:
            if not any(f.name == "kernel" for f in dataclasses.fields(meta_optimizer)):
                raise ValueError(f"kind {manifest['kind']!r} runs on no kernels; drop kernel=")
            meta_optimizer = dataclasses.replace(meta_optimizer, kernel=kernel)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path / MANIFEST}: {error}") from error
    abstract = jax.eval_shape(meta_optimizer.init_meta, jax.random.key(0))
    expected = [
        {"path": _path_name(p), "shape": list(leaf.shape), "dtype": str(leaf.dtype)}
        for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]
    ]
    _check_against_expected(manifest, expected, path / MANIFEST)
    if not (path / THETA_DIR).is_dir():
        raise CheckpointError(f"{path}: missing the {THETA_DIR}/ array directory")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract)
    try:
        with quiet_failed_reads():
            theta = ocp.StandardCheckpointer().restore(path / THETA_DIR, target)
    except Exception as error:  # orbax raises many types for damaged files
        raise CheckpointError(f"{path / THETA_DIR}: arrays could not be read ({describe_error(error)})") from error
    stored = {entry["path"]: entry.get("sha256") for entry in manifest["arrays"]}
    for entry in describe_arrays(theta):
        if stored[entry["path"]] != entry["sha256"]:
            raise CheckpointError(f"{path / THETA_DIR}: array {entry['path']} does not match its checksum (damaged)")
    return meta_optimizer, theta, manifest


def load(
    path: str | Path, num_steps: int | None = None, *, kernel: str | None = None
) -> optax.GradientTransformationExtraArgs:
    """A ready optax transformation from checkpoint `path` — a directory, or the name of a
    shipped optimizer (`lopt.shipped()` lists them; "checkpoints/<name>" works too).

    num_steps: the length of the training run it will be used for (its progress features read
    step / num_steps); defaults to the length stored at save time. Optimizers that read no
    training progress (found programs at a constant rate: `reads_progress` is False) need none.
    kernel: for kinds that run on kernels, which one (`lopt.learned.dispatch.KERNELS`); by
    default "auto", chosen for the platform where the optimizer runs. A checkpoint records the
    rule and its weights, never the backend it was trained on, so one written on a CPU runs on
    a GPU and the reverse.
    """
    path = resolve(path)
    meta_optimizer, theta, manifest = _load(path, kernel=kernel)
    if num_steps is None:
        num_steps = manifest.get("num_steps")
        if num_steps is None and not meta_optimizer.reads_progress:
            num_steps = 0
        if num_steps is None:
            raise ValueError(f"{path} stores no default num_steps: pass lopt.load(path, num_steps=...)")
    return meta_optimizer.transform(theta, num_steps=num_steps)

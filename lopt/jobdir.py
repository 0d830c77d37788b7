"""Which folders a lopt job may write into: each job kind marks the folders it owns.

A job (meta-train, search, eval) claims its output folder before it writes anything. The claim
succeeds for a folder that does not exist or is empty, for one that already carries this job
kind's marker, and for one that holds only names this kind of job writes (a folder from before
markers existed). Anything else — another kind's marker, a user's files, a link where the folder
should be — is refused in one line, so a job never replaces a file lopt did not write for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from lopt.config import ConfigError

MARKER = ".lopt-job"

# what each job kind writes at the top of its folder
JOB_FILES: dict[str, frozenset[str]] = {
    "meta-train": frozenset(
        {
            "config.json",
            ".config.json.tmp",
            "checkpoints",
            "metrics.jsonl",
            "metrics.jsonl.tmp",
            "optimizer",
            "best",
            "meta_training.png",
        }
    ),
    "search": frozenset(
        {
            "config.json",
            "state.json",
            "log.jsonl",
            "cache.jsonl",
            "validation.jsonl",
            "funnel.json",
            "best.txt",
            "summary.json",
            "curves.png",
            "program",
            "jax-cache",
        }
    ),
    "eval": frozenset({"results.md", "results.json", "loss_curves.png", "lr_sensitivity.png", "cache"}),
    "hpo": frozenset(
        {
            "results.md",
            "results.json",
            "hyperparameters.png",
            ".results.md.tmp",
            ".results.json.tmp",
            ".hyperparameters.png.tmp.png",
        }
    ),
}


def _read_marker(path: Path) -> str | None:
    try:
        if not path.is_file() or path.is_symlink():
            return None
        value = json.loads(path.read_text()).get("job")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def claim(folder: str | Path, kind: str, key: str = "run.output_dir", extra: Iterable[str] = ()) -> Path:
    """Create or take `folder` for a job of `kind` (a key of JOB_FILES), or raise ConfigError
    naming `key`. `extra`: further top-level names this job may find there (e.g. a saved
    program's folder)."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ConfigError(f"{key}: {folder} is a symbolic link; give the folder itself")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        entries = {e.name for e in folder.iterdir()}
    except (FileExistsError, NotADirectoryError) as error:
        raise ConfigError(f"{key}: cannot use {str(folder)!r} as a folder ({error.strerror or error})") from None
    except PermissionError as error:
        raise ConfigError(f"{key}: no permission to use {str(folder)!r} ({error.strerror or error})") from None
    marker = folder / MARKER
    owner = _read_marker(marker)
    if MARKER in entries and owner != kind:
        what = f"a {owner} job's folder" if owner else "a folder whose lopt marker is damaged"
        raise ConfigError(f"{key}: {folder} is {what}; a {kind} job writes only into its own (use another folder)")
    if owner is None:
        foreign = sorted(entries - JOB_FILES[kind] - set(extra) - {MARKER})
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(
                f"{key}: {folder} holds files a lopt {kind} job did not write ({shown}); use an empty or new folder"
            )
        try:
            staging = folder / f"{MARKER}.tmp"
            staging.write_text(json.dumps({"job": kind}))
            os.replace(staging, marker)
        except OSError as error:
            raise ConfigError(f"{key}: cannot write into {str(folder)!r} ({error.strerror or error})") from None
    return folder

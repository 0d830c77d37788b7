"""Caches lopt loads code from (the native kernel's library, a search's lowered calls): only from
a private folder, and only a file whose digest lopt wrote beside it.

A cache folder must belong to this user and be writable by no one else, so no one else could have
placed a file there; each file has `<name>.sha256` written after it, so a truncated, replaced or
half-written file is rebuilt rather than loaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class UntrustedCache(RuntimeError):
    """A cache folder someone else could write to."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def private_folder(folder: Path) -> Path:
    """Create `folder` (mode 0700) if needed; raise UntrustedCache unless it is this user's and
    writable by no one else."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise UntrustedCache(f"{folder} belongs to another user; lopt loads cached code only from its own folder")
    if info.st_mode & 0o022:
        raise UntrustedCache(
            f"{folder} is writable by other users; lopt loads cached code only from a private folder (chmod go-w it)"
        )
    return folder


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_verified(path: Path) -> bytes | None:
    """The bytes of `path` if its folder is private and its digest file matches, else None."""
    try:
        private_folder(path.parent)
        if path.is_symlink() or not path.is_file():
            return None
        data = path.read_bytes()
        return data if _digest_path(path).read_text().strip() == digest(data) else None
    except (OSError, UnicodeDecodeError, UntrustedCache):
        return None


def write_verified(path: Path, data: bytes) -> None:
    """Write `data` to `path` and its digest beside it, each atomically (temp file + rename);
    the digest goes last, so a reader never trusts a file whose digest is not yet written."""
    private_folder(path.parent)
    tag = f"{os.getpid()}.tmp"
    for target, content in ((path, data), (_digest_path(path), (digest(data) + "\n").encode())):
        staging = target.with_name(f".{target.name}.{tag}")
        staging.write_bytes(content)
        os.replace(staging, target)

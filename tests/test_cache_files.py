"""Cached code is loaded only from a private folder and only with the digest lopt wrote (issue 40):
generated contents and tampering."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lopt import cache_files


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=256), where=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_tampered_or_truncated_files_are_not_trusted(data, where, flip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache" / "thing.bin"
        cache_files.write_verified(path, data)
        assert cache_files.read_verified(path) == data
        changed = bytearray(data)
        changed[where % len(data)] ^= flip
        path.write_bytes(bytes(changed))
        assert cache_files.read_verified(path) is None
        path.write_bytes(data[: where % len(data)])
        assert cache_files.read_verified(path) is None


def test_a_file_without_its_digest_or_behind_a_link_is_not_trusted(tmp_path):
    folder = tmp_path / "cache"
    cache_files.write_verified(folder / "a.bin", b"lopt wrote this")
    (folder / "a.bin.sha256").unlink()
    assert cache_files.read_verified(folder / "a.bin") is None
    cache_files.write_verified(folder / "b.bin", b"real")
    (folder / "link.bin").symlink_to(folder / "b.bin")
    (folder / "link.bin.sha256").write_text((folder / "b.bin.sha256").read_text())
    assert cache_files.read_verified(folder / "link.bin") is None


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_folder_others_can_write_is_refused(tmp_path, mode):
    folder = tmp_path / "shared"
    cache_files.write_verified(folder / "a.bin", b"x")
    os.chmod(folder, mode)
    assert cache_files.read_verified(folder / "a.bin") is None
    with pytest.raises(cache_files.UntrustedCache, match="writable by other users"):
        cache_files.write_verified(folder / "b.bin", b"y")
    os.chmod(folder, 0o700)
    assert cache_files.read_verified(folder / "a.bin") == b"x"


@pytest.mark.slow
def test_native_kernel_rebuilds_a_tampered_library(tmp_path, monkeypatch):
    from lopt.learned import native

    compiler = native.compiler()
    if compiler is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path))
    library = native._build(compiler)
    good = library.read_bytes()
    library.write_bytes(good[:-16] + b"\0" * 16)
    assert native._build(compiler).read_bytes() == good
    os.chmod(library.parent, 0o777)
    with pytest.raises(RuntimeError, match="writable by other users"):
        native._build(compiler)

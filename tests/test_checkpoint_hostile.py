"""Checkpoints against hostile folders and values, with generated cases (issue 40): a theta that
is not finite is never saved; an overwrite replaces only a folder that is exactly what lopt.save
wrote; special files inside a checkpoint are refused before anything reads them."""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lopt
from lopt.checkpoint import CheckpointError, is_lopt_checkpoint
from lopt.learned import small_mlp

NAMES = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..")
)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def saved_theta():
    meta = small_mlp(hidden_sizes=(4,))
    return meta, meta.init_meta(jax.random.key(0))


@SETTINGS
@given(leaf=st.integers(0, 100), index=st.integers(0, 10_000), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_save_refuses_non_finite_theta(saved_theta, leaf, index, bad):
    meta, theta = saved_theta
    leaves, treedef = jax.tree.flatten(theta)
    leaf %= len(leaves)
    flat = np.asarray(leaves[leaf]).reshape(-1).copy()
    flat[index % flat.size] = bad
    leaves[leaf] = jnp.asarray(flat.reshape(np.shape(leaves[leaf])))
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(ValueError, match="non-finite"):
            lopt.save(Path(tmp) / "ckpt", meta, treedef.unflatten(leaves))
        assert not (Path(tmp) / "ckpt").exists()


@SETTINGS
@given(where=st.sampled_from(["top", "theta"]), name=NAMES, content=st.binary(max_size=64))
def test_overwrite_spares_a_checkpoint_holding_a_users_file(saved_theta, where, name, content):
    """A file a user put anywhere in a real checkpoint makes it not lopt's alone: overwrite refuses
    and the file survives."""
    meta, theta = saved_theta
    with tempfile.TemporaryDirectory() as tmp:
        path = lopt.save(Path(tmp) / "ckpt", meta, theta)
        folder = path if where == "top" else path / "theta"
        target = folder / name
        if target.exists():  # the name of a file lopt wrote: change its content instead
            target = folder / (name + ".user")
        target.write_bytes(content)
        assert not is_lopt_checkpoint(path)
        with pytest.raises(FileExistsError, match="not a lopt optimizer checkpoint exactly as lopt wrote it"):
            lopt.save(path, meta, theta, overwrite=True)
        assert target.read_bytes() == content


@SETTINGS
@given(extra=st.dictionaries(NAMES, st.one_of(st.integers(), st.text(max_size=8)), max_size=3))
def test_overwrite_spares_a_folder_with_only_a_format_line(saved_theta, extra):
    """A manifest that names lopt's format but does not validate is not lopt's checkpoint."""
    meta, theta = saved_theta
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mine"
        (folder / "theta").mkdir(parents=True)
        (folder / "manifest.json").write_text(__import__("json").dumps({"format": "lopt-optimizer", **extra}))
        with pytest.raises(FileExistsError):
            lopt.save(folder, meta, theta, overwrite=True)
        assert (folder / "manifest.json").exists()


def test_overwrite_replaces_lopts_own_checkpoint(saved_theta):
    meta, theta = saved_theta
    with tempfile.TemporaryDirectory() as tmp:
        path = lopt.save(Path(tmp) / "ckpt", meta, theta)
        assert is_lopt_checkpoint(path)
        changed = jax.tree.map(lambda x: x + 1.0, theta)
        lopt.save(path, meta, changed, overwrite=True)
        np.testing.assert_allclose(jax.tree.leaves(lopt.load_meta(path)[1])[0], jax.tree.leaves(changed)[0])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@SETTINGS
@given(pick=st.integers(0, 1000))
def test_special_file_inside_a_checkpoint_is_refused_without_reading(saved_theta, pick):
    """A FIFO in place of any file of a checkpoint (theta/_METADATA among them) would block a
    reader forever; load and read_manifest refuse it first, in one line that names it."""
    meta, theta = saved_theta
    with tempfile.TemporaryDirectory() as tmp:
        path = lopt.save(Path(tmp) / "ckpt", meta, theta)
        files = sorted(f for f in (path / "theta").rglob("*") if f.is_file())
        victim = files[pick % len(files)]
        victim.unlink()
        os.mkfifo(victim)
        with pytest.raises(CheckpointError, match="not a regular file"):
            lopt.load_meta(path)
        with pytest.raises(CheckpointError, match="not a regular file"):
            lopt.read_manifest(path)


@pytest.mark.parametrize("written_with", ["native", "pallas", "interpret", "xla"])
def test_a_checkpoint_runs_wherever_it_is_loaded(tmp_path, written_with):
    """The kernel is chosen where the optimizer runs, never saved: a theta trained with the CPU's
    native kernel or a GPU's Pallas one (an older manifest that recorded it is simulated by
    writing the field back) loads and steps here with the platform's choice, or the one asked for."""
    import json

    import optax

    meta = small_mlp(hidden_sizes=(4,), kernel=written_with if written_with != "pallas" else "xla")
    theta = meta.init_meta(jax.random.key(0))
    path = lopt.save(tmp_path / "ckpt", meta, theta, num_steps=10)
    manifest = json.loads((path / "manifest.json").read_text())
    assert "kernel" not in manifest["config"]
    manifest["config"]["kernel"] = written_with  # as a checkpoint from before this rule recorded it
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded, _ = lopt.load_meta(path)
    assert loaded.kernel == "auto"
    assert lopt.load_meta(path, kernel="xla")[0].kernel == "xla"
    opt = lopt.load(path)
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(optax.apply_updates(params, updates)))

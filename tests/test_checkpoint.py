"""Save/load of trained optimizers: exact round trips and clear errors for damaged files."""

import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import CheckpointError
from lopt.learned import factored_mlp, small_mlp, velo_small


def updates_of(opt, steps=3):
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}
    state, out = opt.init(params), []
    for i in range(steps):
        grads = jax.tree.map(lambda p: jnp.cos(p + i), params)
        updates, state = opt.update(grads, state, params, loss=jnp.float32(2.0 - i * 0.1))
        out.append(updates)
    return out


@pytest.mark.parametrize(
    "meta",
    [small_mlp(hidden_sizes=(4, 4)), factored_mlp(), velo_small(lstm_hidden=8, bank_size=4)],
    ids=["mlp", "factored", "velo"],
)
def test_round_trip_gives_identical_updates(tmp_path, meta):
    theta = meta.init_meta(jax.random.key(3))
    path = lopt.save(tmp_path / "opt", meta, theta, {"estimator": "pes", "outer_steps": 7}, num_steps=50)
    loaded_meta, loaded_theta = lopt.load_meta(path)
    assert loaded_meta == meta
    chex.assert_trees_all_equal(loaded_theta, theta)
    chex.assert_trees_all_equal(updates_of(lopt.load(path)), updates_of(meta.transform(theta, num_steps=50)))
    manifest = lopt.read_manifest(path)
    assert manifest["provenance"]["estimator"] == "pes" and manifest["num_steps"] == 50


@pytest.fixture
def saved(tmp_path):
    meta = small_mlp(hidden_sizes=(4, 4))
    return lopt.save(tmp_path / "opt", meta, meta.init_meta(jax.random.key(0)), num_steps=10)


def edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_missing_or_broken_manifest(saved):
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        lopt.load(saved)
    (saved / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="missing manifest.json"):
        lopt.load(saved)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        lopt.load(saved.parent / "elsewhere")


def test_unknown_kind_and_newer_version(saved):
    edit_manifest(saved, lambda m: m.update(kind="transformer_lopt"))
    with pytest.raises(
        CheckpointError,
        match="unknown learned-optimizer kind 'transformer_lopt'; "
        "known kinds: generalist, lr_controller, mlp, program, unf, velo",
    ):
        lopt.load(saved)
    edit_manifest(saved, lambda m: m.update(kind="mlp", format_version=99))
    with pytest.raises(CheckpointError, match="format version 99 is newer"):
        lopt.load(saved)


def test_config_that_no_longer_matches_the_arrays(saved):
    edit_manifest(saved, lambda m: m["config"].update(hidden_sizes=[8, 4]))
    with pytest.raises(
        CheckpointError, match=r"array layers/0/b is float32\[4\], but this optimizer.s config expects float32\[8\]"
    ):
        lopt.load(saved)
    edit_manifest(saved, lambda m: m["config"].update(hidden_sizes=[4, 4], hiden=3))
    with pytest.raises(CheckpointError, match="unknown key 'hiden'"):
        lopt.load(saved)


def test_missing_array_entry_and_missing_array_files(saved):
    edit_manifest(saved, lambda m: m.update(arrays=m["arrays"][1:]))
    with pytest.raises(CheckpointError, match="missing array"):
        lopt.load(saved)


def test_deleted_theta_directory(saved):
    shutil.rmtree(saved / "theta")
    with pytest.raises(CheckpointError, match="missing the theta/ array directory"):
        lopt.load(saved)


def test_damaged_array_values_fail_the_checksum(saved):
    edit_manifest(saved, lambda m: m["arrays"][0].update(sha256="0" * 64))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        lopt.load(saved)


def test_corrupted_array_files(saved):
    for file in (saved / "theta").rglob("*"):
        if file.is_file() and file.stat().st_size > 0 and "manifest" not in file.name and "METADATA" not in file.name:
            file.write_bytes(b"\x00" * file.stat().st_size)
    with pytest.raises(CheckpointError):
        lopt.load(saved)


def test_save_refuses_to_clobber_and_replaces_atomically(saved):
    meta = small_mlp(hidden_sizes=(4, 4))
    with pytest.raises(FileExistsError):
        lopt.save(saved, meta, meta.init_meta(jax.random.key(1)))
    theta = meta.init_meta(jax.random.key(1))
    lopt.save(saved, meta, theta, overwrite=True, num_steps=10)
    chex.assert_trees_all_equal(lopt.load_meta(saved)[1], theta)
    assert [p.name for p in saved.parent.iterdir()] == ["opt"]  # no staging or retired directories left


def test_load_needs_num_steps_when_none_was_stored(tmp_path):
    meta = small_mlp(hidden_sizes=(4, 4))
    path = lopt.save(tmp_path / "x", meta, meta.init_meta(jax.random.key(0)))
    with pytest.raises(ValueError, match="num_steps"):
        lopt.load(path)
    assert lopt.load(path, num_steps=5) is not None


@pytest.mark.parametrize(
    "name", ["small-mlp-pes-h100", "lr-controller-pes-h100", "program-search-h200", "program-search-h200-cosine"]
)
def test_shipped_optimizers_load_by_name_and_train(name):
    """The shipped checkpoints load by name (and as checkpoints/<name>) and take finite steps."""
    assert name in lopt.shipped()
    opt = lopt.load(name, num_steps=100)
    assert lopt.read_manifest(f"checkpoints/{name}")["kind"] in ("mlp", "lr_controller", "program")
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    state = opt.init(params)
    updates, _ = opt.update(
        jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params), state, params, loss=jnp.float32(1.0)
    )
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_shipped_scheduled_program_is_its_cards_formula():
    """program-search-h200-cosine, loaded untuned, is the card's rule computed in numpy:
    w ← w − η_t · 1e-3 · lr · (m / (√v + ε) + 0.067·sign(g)), m ← 0.9 m + 0.1 g, v ← 0.999 v +
    0.001 g² (m and v updated first, no bias correction), lr = 10 stored in the checkpoint, and
    η_t the 5% linear warm-up then cosine to 0: with T = 40, (t+1)/2 for t < 2, then
    ½(1 + cos(π (t+1−2)/38))."""
    total, eps, c = 40, 3.2678881822789663e-09, 0.06723962724208832
    opt = lopt.load("program-search-h200-cosine", num_steps=total)
    with pytest.raises(ValueError, match="num_steps"):
        lopt.load("program-search-h200-cosine")  # a scheduled program needs the run's length
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    params = {"w": jnp.asarray(w)}
    state = opt.init(params)
    ref, m, v = w.astype(np.float64), np.zeros(w.shape), np.zeros(w.shape)
    for t in range(total):
        g = rng.normal(size=w.shape).astype(np.float32)
        updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
        factor = (t + 1) / 2 if t < 2 else 0.5 * (1 + np.cos(np.pi * (t + 1 - 2) / (total - 2)))
        ref = ref - factor * 10.0 * 1e-3 * (m / (np.sqrt(v) + eps) + c * np.sign(g))
        # float32 steps of ~1e-2 against float64: 1e-5 is 1/70 of one step's sign term
        np.testing.assert_allclose(np.asarray(params["w"]), ref, rtol=0, atol=1e-5, err_msg=f"step {t}")


def test_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(lopt.CheckpointError, match="shipped optimizers: .*small-mlp-pes-h100"):
        lopt.load("no-such-optimizer")


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: m.update(arrays="../../etc/passwd"), "'arrays' must be a list"),
        (lambda m: m["arrays"][0].pop("shape"), "lacks a list 'shape'"),
        (lambda m: m["arrays"][0].pop("path"), "lacks a str 'path'"),
        (lambda m: m.update(num_steps="abc"), "'num_steps' must be a positive whole number"),
        (lambda m: m.update(kind=["mlp"]), "'kind' must be a string"),
    ],
)
def test_hand_edited_manifests_are_checkpoint_errors(saved, change, message):
    """Issue 17 (7): malformed manifest fields fail with the field named, not a TypeError or
    KeyError from inside the loader."""
    edit_manifest(saved, change)
    with pytest.raises(CheckpointError, match=message):
        lopt.load(saved)


def test_deeply_nested_manifest_and_dot_dot_name(saved):
    text = (saved / "manifest.json").read_text()
    (saved / "manifest.json").write_text(text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="nested"):
        lopt.load(saved)
    with pytest.raises(CheckpointError, match="manifest|no such checkpoint"):
        lopt.read_manifest("checkpoints/..")


def test_overwrite_replaces_only_lopt_checkpoints_and_clears_killed_saves(tmp_path):
    """Issue 17 (4): overwrite=True never deletes an ordinary folder; staging and retired copies
    that a killed save left behind are removed by the next save, and nothing else is."""
    meta = small_mlp(hidden_sizes=(4, 4))
    theta = meta.init_meta(jax.random.key(0))
    ordinary = tmp_path / "mine"
    ordinary.mkdir()
    (ordinary / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a lopt optimizer checkpoint"):
        lopt.save(ordinary, meta, theta, num_steps=10, overwrite=True)
    assert (ordinary / "notes.txt").read_text() == "keep me"
    for name in (".opt.tmp-0123abcd", ".opt.old-89abcdef", ".opt.backup-mine"):
        (tmp_path / name).mkdir()
    lopt.save(tmp_path / "opt", meta, theta, num_steps=10)
    lopt.save(tmp_path / "opt", meta, theta, num_steps=10, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".opt.backup-mine", "mine", "opt"]


def test_shipped_program_takes_the_hand_computed_adam_plus_sign_step():
    """program-search-h200 is (m / (√v + ε) + c·sign(g)) · lr · 1e-3 (its model card): two steps
    from zero states, computed by hand, equal the loaded optax transformation's."""
    text = lopt.read_manifest("checkpoints/program-search-h200")["config"]["text"]
    eps, c = (float(line.split()[-1]) for line in text.splitlines() if "x6 = x5 +" in line or "x8 = x1 *" in line)
    opt = lopt.load("program-search-h200")
    params = {"w": jnp.zeros(4)}
    grads = [jnp.array([0.3, -2.0, 1e-4, 0.0]), jnp.array([-0.1, -1.0, 5e-4, 0.0])]
    state, m, v = opt.init(params), np.zeros(4), np.zeros(4)
    for g in grads:
        updates, state = opt.update({"w": g}, state, params)
        g = np.asarray(g, np.float64)
        m, v = 0.1 * g + 0.9 * m, 0.001 * g * g + 0.999 * v
        expected = -(m / (np.sqrt(v) + eps) + c * np.sign(g)) * 1e-3
        np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5, atol=1e-12)

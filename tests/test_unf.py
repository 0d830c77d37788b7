"""The permutation-equivariant learned optimizer (lopt.learned.unf): equivariance under the
network's weight-space symmetries on an MLP, a conv net and a transformer (hypothesis draws the
permutations), a deliberately broken symmetry that the same check catches, the per-parameter MLP
at zero equivariant weights, symmetry inference, save / load."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lopt
from lopt.learned import symmetry
from lopt.learned.mlp import MLPOptimizer
from lopt.learned.unf import UNFOptimizer
from lopt.tasks import build, task_spec

unf = importlib.import_module("lopt.learned.unf")  # the module (lopt.learned.unf is also the preset's name)
TASKS = ["regression-mlp-tanh64x3", "mnist1d-conv-16-32", "pytext-transformer-32x1"]
STEPS = 3


@pytest.fixture(scope="module")
def problems():
    out = {}
    for name in TASKS:
        params = build(task_spec(name)).init(jax.random.key(0))
        grads = [
            jax.tree.map(lambda p, i=i: jnp.sin(3.0 * p + i) + 0.1 * i * jnp.cos(p * 7.0), params) for i in range(STEPS)
        ]
        out[name] = (params, grads)
    return out


def _permute(tree, spec, perms, skip=lambda path: False):
    """Permute every axis labelled G by perms[G] (a tensor whose path `skip` names is left as is)."""

    def one(path, x, axes):
        if skip(jax.tree_util.keystr(path)):
            return x
        for a, label in enumerate(axes):
            if label is not None:
                x = jnp.take(x, perms[label], axis=a)
        return x

    leaves, treedef = jax.tree.flatten(tree)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    labels = treedef.flatten_up_to(spec)
    return treedef.unflatten([one(p, x, a) for p, x, a in zip(paths, leaves, labels)])


_STEPS: dict = {}


def _updates(optimizer, theta, params, grads):
    tx = optimizer.transform(theta, num_steps=50)
    state = tx.init(params)
    key = (id(optimizer), id(theta), unf._summaries)  # one compile per optimizer (and patched network)
    step = _STEPS.setdefault(key, jax.jit(tx.update))
    out = []
    for g in grads:
        u, state = step(g, state, params)
        params = jax.tree.map(jnp.add, params, u)
        out.append(u)
    return out


OPTIMIZER = UNFOptimizer(equivariant_init_scale=0.5)  # nonzero, so every equivariant term acts
THETA = OPTIMIZER.init_meta(jax.random.key(3))


def _equivariance_error(problems, task, seed, skip=lambda path: False):
    params, grads = problems[task]
    spec = symmetry.infer(params)
    sizes = {}
    for leaf, axes in zip(jax.tree.leaves(params), jax.tree.flatten(params)[1].flatten_up_to(spec)):
        for size, label in zip(leaf.shape, axes):
            if label is not None:
                sizes[label] = size
    rng = np.random.default_rng(seed)
    perms = {label: jnp.asarray(rng.permutation(n)) for label, n in sizes.items()}
    expected = [_permute(u, spec, perms) for u in _updates(OPTIMIZER, THETA, params, grads)]
    got = _updates(
        OPTIMIZER, THETA, _permute(params, spec, perms, skip), [_permute(g, spec, perms, skip) for g in grads]
    )
    scale = max(float(jnp.max(jnp.abs(x))) for u in expected for x in jax.tree.leaves(u))
    return (
        max(
            float(jnp.max(jnp.abs(a - b)))
            for u, v in zip(got, expected)
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v))
        )
        / scale
    )


@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_updates_permute_with_the_hidden_units(problems, task, seed):
    """Permute every group's units in every tensor that indexes them (the transformer's residual
    stream across all blocks, its heads, query/key and value features, its MLP units): the update
    is the permuted update, to 1e-5 of its scale."""
    assert _equivariance_error(problems, task, seed) < 1e-5


def test_a_broken_symmetry_fails_the_check(problems, monkeypatch):
    """The same check fails when the permutation is not a symmetry (one kernel left unpermuted) and
    when the network is not equivariant (a summary that reads the first unit, not the mean)."""
    assert _equivariance_error(problems, TASKS[0], 0, skip=lambda path: "Dense_1']['kernel" in path) > 1e-3
    monkeypatch.setattr(unf, "_summaries", lambda hidden, labels: {k: v[:1] for k, v in _real(hidden, labels).items()})
    jax.clear_caches()
    assert _equivariance_error(problems, TASKS[0], 0) > 1e-3


_real = unf._summaries


def test_zero_equivariant_weights_give_the_per_parameter_mlp(problems):
    params, grads = problems[TASKS[0]]
    ours = UNFOptimizer(hidden_sizes=(8, 8))
    theta = ours.init_meta(jax.random.key(0))
    mlp = MLPOptimizer(hidden_sizes=(8, 8), kernel="xla", fused_min_size=1 << 30)
    mlp_theta = {k: v for k, v in theta.items() if k != "equivariant"}
    for a, b in zip(_updates(ours, theta, params, grads), _updates(mlp, mlp_theta, params, grads)):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9), a, b)


def test_symmetry_inference_names_the_groups_and_rejects_unknown_trees():
    params = build(task_spec("pytext-transformer-32x1")).init(jax.random.key(0))
    groups = symmetry.groups(symmetry.infer(params))
    assert groups[0] == "residual" and {"TransformerBlock_0/mlp", "TransformerBlock_0/heads"} <= set(groups)
    with pytest.raises(symmetry.UnknownStructure, match="no permutation rule for 'weights'"):
        symmetry.infer({"weights": jnp.ones((3, 3))})
    with pytest.warns(UserWarning, match="treating no axis as permutable"):
        assert UNFOptimizer().labels({"weights": jnp.ones((3, 3))}) == [(None, None)]


def test_config_errors_and_save_load_roundtrip(tmp_path, problems):
    with pytest.raises(ValueError, match="symmetry: unknown 'al'"):
        UNFOptimizer(symmetry="al")
    params, grads = problems[TASKS[1]]
    path = lopt.save(tmp_path / "unf", OPTIMIZER, THETA)
    loaded = lopt.load(path, num_steps=50)
    direct = OPTIMIZER.transform(THETA, num_steps=50)
    u1, _ = loaded.update(grads[0], loaded.init(params), params)
    u2, _ = direct.update(grads[0], direct.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), u1, u2)

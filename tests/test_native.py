"""The native CPU kernel of the per-parameter MLP (lopt.learned.native) against the jnp
reference network, under jit, vmap (per-run and shared weights), grad and jvp; the optimizer path
that uses it; what happens when it cannot be built; the sharded PES step that runs it."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.learned import native, per_param_mlp, small_mlp
from lopt.learned import dispatch
from meta_train.estimators import make_estimator
from meta_train.sharding import population_mesh, replicate, shard_population
from meta_train.truncation import TruncationSchedule
from tasks import MLPSpec, build

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no native kernel: {native.unavailable_reason()}")


def random_layers(key, sizes, batch=()):
    keys = jax.random.split(key, 2 * len(sizes))
    return [(jax.random.normal(keys[2 * i], (*batch, a, b)) / np.sqrt(a), 0.3 * jax.random.normal(keys[2 * i + 1], (*batch, b)))
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


def random_tensors(key, sizes, num_features, batch=()):
    keys = jax.random.split(key, len(sizes))
    return [list(jax.random.normal(k, (num_features, *batch, n))) for k, n in zip(keys, sizes)]


@pytest.mark.parametrize("hidden", [(32, 32), (8,), (5, 19, 3)])
def test_kernel_equals_reference_network(hidden):
    # tensor sizes: a full tile, tails of every length class, a single element, more than a tile
    sizes, num_features = [16, 1, 7, 33, 250], 6
    inputs = random_tensors(jax.random.key(0), sizes, num_features)
    layers = random_layers(jax.random.key(1), [num_features, *hidden, 2])
    got = jax.jit(native.mlp_tensors)(inputs, layers)
    for features, (direction, magnitude) in zip(inputs, got):
        want = per_param_mlp.reference(features, layers)
        np.testing.assert_allclose(direction, want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(magnitude, want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_kernel_under_vmap_equals_reference(shared):
    runs, sizes, num_features = 3, [40, 5], 4
    inputs = random_tensors(jax.random.key(2), sizes, num_features, batch=(runs,))
    layers = random_layers(jax.random.key(3), [num_features, 16, 2], batch=() if shared else (runs,))
    layer_axes = None if shared else 0
    got = jax.jit(jax.vmap(native.mlp_tensors, in_axes=(0, layer_axes)))(
        inputs, layers)
    for t, features in enumerate(inputs):
        want = jax.vmap(per_param_mlp.reference, in_axes=(0, layer_axes))(features, layers)
        np.testing.assert_allclose(got[t][0], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[t][1], want[1], rtol=1e-5, atol=1e-5)


def test_kernel_derivatives_are_the_reference_ones():
    inputs = random_tensors(jax.random.key(4), [9, 20], 3)
    layers = random_layers(jax.random.key(5), [3, 8, 8, 2])

    def objective(network):
        def f(inputs, layers):
            outputs = network(inputs, layers)
            return sum(jnp.sum(jnp.sin(d) * m) for d, m in outputs)
        return f

    reference = lambda inputs, layers: [per_param_mlp.reference(f, layers) for f in inputs]
    got = jax.jit(jax.grad(objective(native.mlp_tensors), argnums=(0, 1)))(inputs, layers)
    want = jax.grad(objective(reference), argnums=(0, 1))(inputs, layers)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    tangent = jax.tree.map(jnp.ones_like, layers)
    _, got_jvp = jax.jvp(lambda l: objective(native.mlp_tensors)(inputs, l), (layers,), (tangent,))
    _, want_jvp = jax.jvp(lambda l: objective(reference)(inputs, l), (layers,), (tangent,))
    np.testing.assert_allclose(got_jvp, want_jvp, rtol=1e-5)


def test_bad_operands_name_the_problem():
    layers = random_layers(jax.random.key(6), [3, 4, 2])
    with pytest.raises(ValueError, match="expects 3 features, got 2"):
        native.mlp_tensors([[jnp.ones(5), jnp.ones(5)]], layers)
    with pytest.raises(ValueError, match="features of tensor 0 differ in size"):
        native.mlp_tensors([[jnp.ones(5), jnp.ones(4), jnp.ones(5)]], layers)
    with pytest.raises(ValueError, match="same nonzero number of features"):
        native.mlp_tensors([[jnp.ones(5)] * 3, [jnp.ones(2)] * 2], layers)


def test_wide_mlp_optimizer_uses_the_kernel_on_cpus_and_matches_xla():
    assert small_mlp().kernel_for_backend("cpu") == "native"
    assert small_mlp(hidden_sizes=(8, 8)).kernel_for_backend("cpu") == "xla"
    with pytest.raises(ValueError, match="runs on CPUs only"):
        small_mlp(kernel="native").kernel_for_backend("gpu")
    meta = small_mlp()
    theta = meta.init_meta(jax.random.key(7))
    params = {"w": jax.random.normal(jax.random.key(8), (6, 5)), "b": jnp.zeros((5,)), "s": jnp.ones(())}
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
    updates = {}
    for kernel in ("native", "xla"):
        opt = dataclasses.replace(meta, kernel=kernel).transform(theta, num_steps=10)
        updates[kernel], _ = jax.jit(opt.update)(grads, opt.init(params), params)
    chex.assert_trees_all_close(updates["native"], updates["xla"], rtol=1e-5, atol=1e-9)
    assert float(jnp.abs(updates["native"]["w"]).sum()) > 0


def test_unavailable_kernel_says_why_and_auto_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert "no-such-compiler" in native._load.__wrapped__()
    monkeypatch.setenv("LOPT_NATIVE", "0")
    assert native._load.__wrapped__() == "turned off by LOPT_NATIVE=0"
    monkeypatch.setattr(native, "_load", lambda: "turned off by LOPT_NATIVE=0")
    assert dispatch.network_kernel("auto", (32, 32), False, "cpu") == "xla"
    with pytest.raises(RuntimeError, match="unavailable: turned off"):
        native.mlp([jnp.ones(3)], random_layers(jax.random.key(9), [1, 4, 2]))


def test_failed_build_leaves_no_library(monkeypatch, tmp_path):
    script = tmp_path / "broken-cxx"
    script.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo broken 1.0 && exit 0\necho 'error: broken' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(script))
    assert "broken-cxx failed on native_mlp.cc: error: broken" in native._load.__wrapped__()
    assert not list((tmp_path / "cache" / "native").iterdir())


def test_sharded_pes_step_with_the_kernel_equals_one_device():
    assert len(jax.devices()) == 8, "conftest provides eight CPU devices"
    task = build(MLPSpec("digits", (8,), "relu", 16))
    meta = small_mlp()
    schedule = TruncationSchedule(3, 12, 12, "constant")
    theta = meta.init_meta(jax.random.key(0))
    mesh = population_mesh(8)
    plain = make_estimator("pes", meta, task, schedule, num_workers=8, sigma=0.01)
    split = make_estimator("pes", meta, task, schedule, num_workers=8, sigma=0.01, mesh=mesh)
    state = plain.init(jax.random.key(1), theta)
    g1, s1, _ = plain.step(jax.random.key(2), theta, state)
    g2, s2, _ = split.step(jax.random.key(2), replicate(theta, mesh), shard_population(state, mesh))
    assert "all-gather" not in split._compiled_step.lower(task, jax.random.key(2), replicate(theta, mesh),
                                                         shard_population(state, mesh)).compile().as_text()
    # ĝ = ξ (L⁺ − L⁻) / 2σ² amplifies summation-order differences of the loss: compare at the
    # gradient's scale
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1))
    chex.assert_trees_all_close(g1, g2, rtol=0, atol=1e-3 * scale)
    chex.assert_trees_all_close(s1, s2, rtol=1e-4, atol=1e-6)

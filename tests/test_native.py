"""The native CPU kernel of the per-parameter MLP (lopt.learned.native) against the jnp
reference network, under jit, vmap (per-run and shared weights), grad and jvp; the optimizer path
that uses it; what happens when it cannot be built; the sharded PES step that runs it."""

import dataclasses
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.learned import factored_mlp, native, per_param_mlp, small_mlp
from lopt.learned import features as F
from lopt.meta_train.estimators import make_estimator
from lopt.meta_train.sharding import population_mesh, replicate, shard_population
from lopt.meta_train.truncation import TruncationSchedule
from lopt.tasks import MLPSpec, build

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no native kernel: {native.unavailable_reason()}")


def random_layers(key, sizes, batch=()):
    keys = jax.random.split(key, 2 * len(sizes))
    return [
        (
            jax.random.normal(keys[2 * i], (*batch, a, b)) / np.sqrt(a),
            0.3 * jax.random.normal(keys[2 * i + 1], (*batch, b)),
        )
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]


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
    got = jax.jit(jax.vmap(native.mlp_tensors, in_axes=(0, layer_axes)))(inputs, layers)
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
    _, got_jvp = jax.jvp(lambda ls: objective(native.mlp_tensors)(inputs, ls), (layers,), (tangent,))
    _, want_jvp = jax.jvp(lambda ls: objective(reference)(inputs, ls), (layers,), (tangent,))
    np.testing.assert_allclose(got_jvp, want_jvp, rtol=1e-5)


def random_accumulators(key, sizes, num_momenta, num_rms, batch=()):
    """(g, p, accumulators) per tensor; the last tensor's gradient and second moments are zero."""
    tensors = []
    for t, n in enumerate(sizes):
        keys = jax.random.split(jax.random.fold_in(key, t), 2 + num_momenta + num_rms)
        normal = lambda k, s=1.0: s * jax.random.normal(k, (*batch, n))
        g = normal(keys[0], 0.2) * (t < len(sizes) - 1)
        momenta = tuple(normal(k, 0.1) for k in keys[2 : 2 + num_momenta])
        rms = tuple(jnp.square(normal(k, 0.1)) * (t < len(sizes) - 1) for k in keys[2 + num_momenta :])
        tensors.append((g, normal(keys[1]), F.ParamAccumulators(momenta, rms, ())))
    return tensors


def reference_features_network(tensors, layers):
    return [per_param_mlp.reference(F.normalised_features(g, p, acc, kernel=False), layers) for g, p, acc in tensors]


@pytest.mark.parametrize("num_momenta,num_rms", [(3, 1), (1, 0), (2, 2)])
def test_features_kernel_equals_normalised_features_and_reference_network(num_momenta, num_rms):
    sizes = [16, 1, 7, 33, 250, 40]
    tensors = random_accumulators(jax.random.key(10), sizes, num_momenta, num_rms)
    num_features = F.AccumulatorConfig(
        tuple(np.linspace(0.5, 0.9, num_momenta)), tuple(np.linspace(0.9, 0.99, num_rms))
    ).num_features
    layers = random_layers(jax.random.key(11), [num_features, 32, 32, 2])
    got = jax.jit(native.features_mlp)(tensors, layers)
    for (direction, magnitude), want in zip(got, reference_features_network(tensors, layers)):
        np.testing.assert_allclose(direction, want[0], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(magnitude, want[1], rtol=2e-5, atol=2e-5)


def test_large_tensors_split_over_threads_equal_reference():
    # ≥ 2^16 elements per call: the kernel splits the work into chunks on XLA's thread pool, and
    # the per-tensor mean squares are summed from chunk sums
    tensors = random_accumulators(jax.random.key(15), [70_001, 4_099], 3, 1)
    layers = random_layers(jax.random.key(16), [11, 32, 32, 2])
    got = jax.jit(native.features_mlp)(tensors, layers)
    want = reference_features_network(tensors, layers)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)
    features = [F.normalised_features(g, p, acc, kernel=False) for g, p, acc in tensors]
    chex.assert_trees_all_close(jax.jit(native.mlp_tensors)(features, layers), want, rtol=1e-4, atol=1e-4)


def test_features_kernel_under_vmap_and_grad_equals_reference():
    runs = 3
    tensors = random_accumulators(jax.random.key(12), [24, 5], 3, 1, batch=(runs,))
    layers = random_layers(jax.random.key(13), [11, 8, 2], batch=(runs,))
    got = jax.jit(jax.vmap(native.features_mlp))(tensors, layers)
    want = jax.vmap(reference_features_network)(tensors, layers)
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-5)

    def objective(network):
        return lambda tensors, layers: sum(jnp.sum(jnp.tanh(d) * m) for d, m in network(tensors, layers))

    unbatched = jax.tree.map(lambda x: x[0], (tensors, layers))
    got = jax.jit(jax.grad(objective(native.features_mlp), argnums=(0, 1)))(*unbatched)
    want = jax.grad(objective(reference_features_network), argnums=(0, 1))(*unbatched)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)


def test_bad_operands_name_the_problem():
    layers = random_layers(jax.random.key(6), [3, 4, 2])
    with pytest.raises(ValueError, match="expects 3 features, got 2"):
        native.mlp_tensors([[jnp.ones(5), jnp.ones(5)]], layers)
    with pytest.raises(ValueError, match="inputs of tensor 0 differ in size"):
        native.mlp_tensors([[jnp.ones(5), jnp.ones(4), jnp.ones(5)]], layers)
    with pytest.raises(ValueError, match="same nonzero number of inputs"):
        native.mlp_tensors([[jnp.ones(5)] * 3, [jnp.ones(2)] * 2], layers)
    tensors = random_accumulators(jax.random.key(14), [5], 3, 1)
    with pytest.raises(ValueError, match="expects 3 features, these accumulators give 11"):
        native.features_mlp(tensors, layers)
    factored = F.ParamAccumulators((jnp.ones(5),), (), (F.FactoredMoment(jnp.ones(5), jnp.ones(0)),))
    with pytest.raises(ValueError, match="without factored moments"):
        native.features_mlp([(jnp.ones(5), jnp.ones(5), factored)], layers)


def test_wide_mlp_optimizer_uses_the_kernel_on_cpus_and_matches_xla():
    assert small_mlp().kernel_for_backend("cpu") == "native"
    assert small_mlp(hidden_sizes=(8, 8)).kernel_for_backend("cpu") == "xla"
    with pytest.raises(ValueError, match="runs on CPUs only"):
        small_mlp(kernel="native").kernel_for_backend("gpu")
    params = {"w": jax.random.normal(jax.random.key(8), (6, 5)), "b": jnp.zeros((5,)), "s": jnp.ones(())}
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
    # small_mlp: features and network in the kernel; factored_mlp: XLA's features, the kernel's network
    for meta in (small_mlp(), factored_mlp(hidden_sizes=(32, 32))):
        theta = meta.init_meta(jax.random.key(7))
        updates = {}
        for kernel in ("native", "xla"):
            opt = dataclasses.replace(meta, kernel=kernel).transform(theta, num_steps=10)
            state = opt.init(params)
            for _ in range(3):
                updates[kernel], state = jax.jit(opt.update)(grads, state, params)
        chex.assert_trees_all_close(updates["native"], updates["xla"], rtol=2e-5, atol=1e-9)
        assert float(jnp.abs(updates["native"]["w"]).sum()) > 0


def float64_network(features, layers):
    h = np.stack([np.asarray(f, np.float64) for f in features], axis=-1)
    for i, (w, b) in enumerate(layers):
        h = h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        h = np.maximum(h, 0.0) if i < len(layers) - 1 else h
    return h[..., 0], h[..., 1]


@pytest.mark.skipif(native.amx() != "on", reason=f"AMX: {native.amx()}")
@pytest.mark.parametrize("hidden", [(32, 32), (5, 17, 31), (32, 16)])
def test_amx_layers_are_float32_accurate(hidden):
    # tile layers: 32 -> 32; 17 -> 31 (odd inputs padded, outputs past 16 in a second tile);
    # 32 -> 16 (one output tile)
    # heavy-tailed features (as 1/sqrt(v) ones are): large terms cancel inside the hidden layers,
    # where an error relative to each term shows most
    num_features, sizes = 11, [4_099, 37]
    keys = jax.random.split(jax.random.key(20), 2)
    inputs = [list(jax.random.t(k, 2.0, (num_features, n))) for k, n in zip(keys, sizes)]
    layers = random_layers(jax.random.key(21), [num_features, *hidden, 2])
    run = jax.jit(native.mlp_tensors)
    assert not native.fmas_only()
    tiles = run(inputs, layers)
    with jax.default_matmul_precision("F32_F32_F32"):
        assert native.fmas_only()
        fmas = jax.jit(native.mlp_tensors)(inputs, layers)
    for features, amx_out, fma_out in zip(inputs, tiles, fmas):
        for got_amx, got_fma, want in zip(amx_out, fma_out, float64_network(features, layers)):
            scale = np.abs(want).max()
            amx_error, fma_error = np.abs(got_amx - want).max(), np.abs(got_fma - want).max()
            assert amx_error <= 4 * fma_error + 1e-7 * scale, (amx_error, fma_error)
            assert np.abs(got_amx - want).mean() <= 2 * np.abs(got_fma - want).mean() + 1e-8 * scale
    # the tiles ran: their roundings differ from the FMAs'
    assert any(not np.array_equal(a, f) for t_a, t_f in zip(tiles, fmas) for a, f in zip(t_a, t_f))


def test_amx_status_and_switch_off():
    assert native.amx() == "on" or native.amx().startswith("off: ")
    code = "from lopt.learned import native; print(native.amx()); print(native.fmas_only())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOPT_NATIVE_AMX": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["off: turned off by LOPT_NATIVE_AMX=0", "True"]


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
    assert (
        "all-gather"
        not in split._compiled_step.lower(
            task, jax.random.key(2), replicate(theta, mesh), shard_population(state, mesh)
        )
        .compile()
        .as_text()
    )
    # ĝ = ξ (L⁺ − L⁻) / 2σ² amplifies summation-order differences of the loss: compare at the
    # gradient's scale
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1))
    chex.assert_trees_all_close(g1, g2, rtol=0, atol=1e-3 * scale)
    chex.assert_trees_all_close(s1, s2, rtol=1e-4, atol=1e-6)

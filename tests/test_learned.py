"""Learned optimizers: shapes and dtypes, jit/vmap/grad, hand-built thetas, fused == reference."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.learned import MLPOptimizer, factored_mlp, small_mlp, velo_small
from lopt.learned import features as F
from lopt.learned import per_param_mlp

OPTIMIZERS = {
    "small_mlp": small_mlp(hidden_sizes=(8, 8)),
    "factored_mlp": factored_mlp(),
    "velo_small": velo_small(lstm_hidden=8, bank_size=4),
}


def mixed_params(key):
    k = jax.random.split(key, 6)
    return {
        "scalar": jax.random.normal(k[0], ()),
        "bias": jnp.zeros((7,)),
        "matrix": jax.random.normal(k[1], (5, 3)),
        "conv": jax.random.normal(k[2], (3, 3, 2, 4)),
        "embedding": jax.random.normal(k[3], (11, 6)),
        "half": jax.random.normal(k[4], (4, 4)).astype(jnp.bfloat16),
    }


def loss_fn(params):
    return (
        sum(jnp.sum(jnp.sin(p.astype(jnp.float32)) ** 2 + 0.3 * p.astype(jnp.float32)) for p in jax.tree.leaves(params))
        + 1.0
    )


def small_params(key):
    """Three tensors of ranks 0, 1 and 4: enough to exercise every code path, cheap to compile."""
    full = mixed_params(key)
    return {k: full[k] for k in ("scalar", "bias", "conv")}


def run_steps(opt, params, steps):
    state = opt.init(params)
    history = []
    for _ in range(steps):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss)
        history.append(updates)
        params = optax.apply_updates(params, updates)
    return params, history


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_mixed_pytrees_give_finite_updates_of_matching_shape_and_dtype(name):
    meta = OPTIMIZERS[name]
    theta = meta.init_meta(jax.random.key(0))
    params = mixed_params(jax.random.key(1))
    opt = meta.transform(theta, num_steps=10)
    _, history = jax.jit(lambda p: run_steps(opt, p, 3))(params)
    for updates in history:
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
        chex.assert_tree_all_finite(updates)
    assert float(jnp.abs(history[-1]["bias"]).max()) > 0  # zero-initialised tensors move too


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_same_theta_same_updates_and_vmap_matches_loop(name):
    meta = OPTIMIZERS[name]
    theta = meta.init_meta(jax.random.key(0))
    params = small_params(jax.random.key(1))
    run = jax.jit(lambda th: run_steps(meta.transform(th, num_steps=10), params, 2))
    first, second = run(theta)[1], run(theta)[1]
    chex.assert_trees_all_equal(first, second)
    thetas = jax.vmap(meta.init_meta)(jax.random.split(jax.random.key(2), 3))
    batched = jax.jit(jax.vmap(lambda th: run(th)[0]))(thetas)
    for i in range(3):
        single = run(jax.tree.map(lambda x: x[i], thetas))[0]
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_meta_gradient_flows_through_several_steps(name):
    meta = OPTIMIZERS[name]
    theta = meta.init_meta(jax.random.key(0))
    params = small_params(jax.random.key(1))

    def meta_loss(theta):
        final, _ = run_steps(meta.transform(theta, num_steps=10), params, 3)
        return loss_fn(final)

    grads = jax.jit(jax.grad(meta_loss))(theta)
    chex.assert_tree_all_finite(grads)
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0


@pytest.mark.parametrize("hidden", [(3,), (4, 5)])
def test_fused_network_equals_reference(hidden):
    key = jax.random.key(0)
    feats = list(jax.random.normal(key, (6, 9, 7)))
    sizes = [6, *hidden, 2]
    keys = jax.random.split(key, len(sizes))
    layers = [
        (jax.random.normal(k, (a, b)), jax.random.normal(k, (b,))) for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]
    for fused, ref in zip(per_param_mlp.fused(feats, layers), per_param_mlp.reference(feats, layers)):
        np.testing.assert_allclose(fused, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_optimizer_path_equals_reference_path(name):
    meta = OPTIMIZERS[name]
    theta = meta.init_meta(jax.random.key(0))
    params = small_params(jax.random.key(1))
    fused = dataclasses.replace(meta, fused_min_size=0)
    reference = dataclasses.replace(meta, fused_min_size=1 << 40)
    a = jax.jit(lambda p: run_steps(fused.transform(theta, num_steps=10), p, 3)[1])(params)
    b = jax.jit(lambda p: run_steps(reference.transform(theta, num_steps=10), p, 3)[1])(params)
    chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("hidden, fused_min_size", [((4, 4), 8), ((32, 32), 1 << 40)])
def test_concatenated_and_per_tensor_evaluation_agree(hidden, fused_min_size):
    """(The fused 32-wide network per tensor is left out: its unrolled graph takes minutes and
    many GiB to compile, which is why wide networks concatenate by default.)"""
    meta = small_mlp(hidden_sizes=hidden, fused_min_size=fused_min_size)
    theta = meta.init_meta(jax.random.key(0))
    params = small_params(jax.random.key(1))
    a = jax.jit(
        lambda p: run_steps(dataclasses.replace(meta, concatenate_tensors=True).transform(theta, num_steps=10), p, 2)[1]
    )(params)
    b = jax.jit(
        lambda p: run_steps(dataclasses.replace(meta, concatenate_tensors=False).transform(theta, num_steps=10), p, 2)[
            1
        ]
    )(params)
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-8)


def identity_on_feature(num_inputs, feature_index, hidden=(2, 2)):
    """An exact ReLU network computing d = f[feature_index], m = 0: relu(x) − relu(−x)."""
    layers = []
    w = np.zeros((num_inputs, hidden[0]), np.float32)
    w[feature_index, 0], w[feature_index, 1] = 1.0, -1.0
    layers.append((w, np.zeros(hidden[0], np.float32)))
    for width_in, width_out in zip(hidden[:-1], hidden[1:]):
        w = np.zeros((width_in, width_out), np.float32)
        w[0, 0], w[1, 1] = 1.0, 1.0
        layers.append((w, np.zeros(width_out, np.float32)))
    w = np.zeros((hidden[-1], 2), np.float32)
    w[0, 0], w[1, 0] = 1.0, -1.0
    layers.append((w, np.zeros(2, np.float32)))
    return layers


def hand_momentum_updates(grads_sequence, decay, scale):
    """Independent numpy reference: −scale · m_t / rms(m_t) per tensor."""
    m, out = np.zeros_like(grads_sequence[0]), []
    for g in grads_sequence:
        m = decay * m + (1 - decay) * g
        out.append(-scale * m / np.sqrt(np.mean(m**2)))
    return out


def test_hand_built_mlp_theta_is_normalised_momentum():
    meta = MLPOptimizer(hidden_sizes=(2, 2))
    theta = meta.init_meta(jax.random.key(0))
    names = meta.accumulators.feature_names()
    layers = identity_on_feature(meta.accumulators.num_features, names.index("m0.9"))
    first_w = np.zeros((meta.accumulators.num_features + meta.num_scalar_features, 2), np.float32)
    first_w[: meta.accumulators.num_features] = layers[0][0]
    theta["layers"] = [{"w": jnp.asarray(first_w), "b": jnp.asarray(layers[0][1])}] + [
        {"w": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in layers[1:]
    ]
    assert_each_tensor_gets_its_normalised_momentum(meta.transform(theta, num_steps=100), lambda rms: meta.step_mult)


def assert_each_tensor_gets_its_normalised_momentum(opt, scale):
    """Every tensor's update is −scale(rms(p)) · m/rms(m) of its own gradients. VeLO runs
    same-shaped tensors as one stacked group (base.tensor_groups), so for it this also checks
    that a group's members keep their own state and updates."""
    shapes = {"u": (3, 5), "v": (4,), "w": (3, 5), "x": (3, 5)}
    params = {name: jnp.full(shape, 2.0 + i) for i, (name, shape) in enumerate(shapes.items())}
    rng = np.random.default_rng(0)
    grads = [{name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()} for _ in range(3)]
    state = opt.init(params)
    want = {name: hand_momentum_updates([g[name] for g in grads], 0.9, scale(2.0 + i)) for i, name in enumerate(shapes)}
    for step, g in enumerate(grads):
        updates, state = opt.update(jax.tree.map(jnp.asarray, g), state, params, loss=jnp.float32(1.0))
        for name in shapes:
            np.testing.assert_allclose(updates[name], want[name][step], rtol=2e-5, atol=1e-9)


def test_hand_built_velo_theta_mixes_the_bank_into_normalised_momentum():
    meta = velo_small(lstm_hidden=4, bank_size=3, mlp_hidden=(2, 2), rms_floor=0.5)
    theta = meta.init_meta(jax.random.key(0))
    names = meta.accumulators.feature_names()
    layers = identity_on_feature(meta.accumulators.num_features, names.index("m0.9"))
    flat = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in layers])
    theta["bank"] = jnp.broadcast_to(jnp.asarray(flat) / 100.0, theta["bank"].shape)
    theta["mix"] = {"w": jnp.zeros_like(theta["mix"]["w"]), "b": jnp.ones_like(theta["mix"]["b"])}
    theta["lr"] = {"w": jnp.zeros_like(theta["lr"]["w"]), "b": jnp.zeros_like(theta["lr"]["b"])}
    assert_each_tensor_gets_its_normalised_momentum(
        meta.transform(theta, num_steps=100), lambda rms: meta.step_mult * rms
    )


def test_velo_groups_same_shaped_tensors_without_mixing_them():
    """VeLO runs same-shaped tensors as one stacked group (base.tensor_groups). Renaming the
    leaves reverses their order, which reorders the groups and the tensors inside them; every
    tensor must still get the update (and keep the state) it got before."""
    meta = OPTIMIZERS["velo_small"]
    theta = meta.init_meta(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 6)
    shapes = [(7,), (5, 3), (7,), (7,), (5, 3), ()]
    tensors = [jax.random.normal(k, s) for k, s in zip(keys, shapes)]
    grads = [jnp.sin(3.0 * t) + 0.1 * i for i, t in enumerate(tensors)]

    def run(names):
        params, g = dict(zip(names, tensors)), dict(zip(names, grads))
        opt = meta.transform(theta, num_steps=20)
        state, p = opt.init(params), params
        for _ in range(3):
            updates, state = opt.update(g, state, p, loss=jnp.float32(1.0))
            p = optax.apply_updates(p, updates)
        return [updates[n] for n in names]

    forward = run(["a", "b", "c", "d", "e", "f"])
    backward = run(["f", "e", "d", "c", "b", "a"])
    groups = meta.groups(tensors, "cpu")
    assert [indices for indices, _ in groups] == [[0, 2, 3], [1, 4], [5]]
    chex.assert_trees_all_close(forward, backward, rtol=1e-6, atol=1e-9)
    assert not np.allclose(forward[0], forward[2])  # distinct tensors of one group get distinct updates


def test_velo_clips_gradients_before_anything_reads_them():
    """VeLO clips gradients to ±1000 first: entries past the clip must give exactly the updates
    (and state) of the clipped gradient, for grouped tensors and lone ones alike."""
    meta = OPTIMIZERS["velo_small"]
    opt = meta.transform(meta.init_meta(jax.random.key(0)), num_steps=20)
    keys = jax.random.split(jax.random.key(1), 3)
    params = {
        "a": jax.random.normal(keys[0], (6,)),
        "b": jax.random.normal(keys[1], (6,)),
        "w": jax.random.normal(keys[2], (4, 5)),
    }
    grads = jax.tree.map(
        lambda x: jnp.sin(3.0 * x) + jnp.where(x > 0.5, 4000.0, 0.0) - jnp.where(x < -0.5, 2500.0, 0.0), params
    )
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1000.0

    def run(grads):
        state, p = opt.init(params), params
        for _ in range(2):
            updates, state = opt.update(grads, state, p, loss=jnp.float32(1.0))
            p = optax.apply_updates(p, updates)
        return updates, state

    chex.assert_trees_all_close(
        run(grads), run(jax.tree.map(lambda g: jnp.clip(g, -1000.0, 1000.0), grads)), rtol=1e-6, atol=0
    )


def test_adafactor_statistics_by_hand():
    g = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    acc = F.init_accumulators(jnp.zeros((2, 3)), F.AccumulatorConfig(factored_decays=(0.5,)))
    acc = F.update_accumulators(acc, jnp.asarray(g), F.initial_decays(F.AccumulatorConfig(factored_decays=(0.5,))))
    row = 0.5 * (g**2).mean(1)
    col = 0.5 * (g**2).mean(0)
    np.testing.assert_allclose(acc.factored[0].row, row, rtol=1e-6)
    np.testing.assert_allclose(acc.factored[0].col, col, rtol=1e-6)
    vhat = np.outer(row, col) / row.mean()
    np.testing.assert_allclose(F.factored_rsqrt(acc.factored[0], 2), 1 / np.sqrt(vhat), rtol=1e-4)


def test_own_numerics_are_clean_under_strict_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        for meta in OPTIMIZERS.values():
            theta = meta.init_meta(jax.random.key(0))
            params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
            opt = meta.transform(theta, num_steps=10)
            step = jax.jit(lambda p: opt.update(jax.tree.map(jnp.ones_like, p), opt.init(p), p, loss=jnp.float32(1.0)))
            chex.assert_tree_all_finite(step(params)[0])


def test_clear_errors():
    meta = OPTIMIZERS["small_mlp"]
    opt = meta.transform(meta.init_meta(jax.random.key(0)), num_steps=10)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="needs `params`"):
        opt.update(params, opt.init(params))
    velo = OPTIMIZERS["velo_small"]
    opt = velo.transform(velo.init_meta(jax.random.key(0)), num_steps=10)
    with pytest.raises(ValueError, match="loss=loss"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(TypeError, match="floating-point"):
        ints = {"w": jnp.ones(3, jnp.int32)}
        opt.update(ints, opt.init(ints), ints, loss=1.0)
    with pytest.raises(ValueError, match="momentum_decays must lie in"):
        F.AccumulatorConfig(momentum_decays=(1.5,))

"""Pallas kernels of the learned update (run through Pallas' interpreter on CPU) against the
jnp references, and the one-pass tensor statistics against plain means and variances."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.learned import factored_mlp, kernels, kernels_2d, per_param_mlp, small_mlp
from lopt.learned import features as F
from lopt.learned.velo import statistic_means, tensor_features


def features(arrays):
    g, p, m, v = arrays
    return [g, jnp.clip(g, -0.1, 0.1), p, m * jax.lax.rsqrt(v + 1e-12), jax.lax.rsqrt(v + 1e-12)]


def body(arrays, inverse_rms, network):
    direction, magnitude = network([f * s for f, s in zip(features(arrays), inverse_rms)])
    return direction * jnp.exp(1e-2 * magnitude)


def random_arrays(n, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    g, p, m = (jax.random.normal(k, (n,)) for k in keys[:3])
    return [g, p, m, jnp.abs(jax.random.normal(keys[3], (n,)))]


def random_layers(sizes, seed=1):
    keys = jax.random.split(jax.random.key(seed), len(sizes))
    return [
        (jax.random.normal(k, (a, b)) / np.sqrt(a), 0.1 * jax.random.normal(k, (b,)))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


@pytest.mark.parametrize("size, block", [(1000, 256), (256, 256), (37, 64)])
def test_statistics_pass_equals_mean_squares_and_masks_the_last_block(size, block):
    """Sizes that are not a multiple of the block: the padding past the end must not count
    (rsqrt(0 + eps) = 1e6 there would dominate every mean)."""
    arrays = random_arrays(size)
    got = kernels.statistics_pass(features, arrays, num_features=5, block=block, interpret=True)
    want = np.array([np.mean(np.square(np.asarray(f, np.float64))) for f in features(arrays)])
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("hidden", [(32, 32), (20, 24), (8, 16, 16)])
def test_network_pass_equals_the_matmul_network(hidden):
    """Widths that are not powers of two are zero-padded; three hidden layers chain the dots."""
    arrays = random_arrays(777)
    layers = random_layers([5, *hidden, 2])
    inverse_rms = jnp.array([1.0, 3.0, 0.5, 0.7, 1e-3])
    got = kernels.network_pass(body, arrays, inverse_rms, layers, block=128, interpret=True)
    x = np.stack([np.asarray(f, np.float64) * s for f, s in zip(features(arrays), np.asarray(inverse_rms))], -1)
    for w, b in layers[:-1]:
        x = np.maximum(x @ np.asarray(w, np.float64) + np.asarray(b, np.float64), 0.0)
    out = x @ np.asarray(layers[-1][0], np.float64) + np.asarray(layers[-1][1], np.float64)
    np.testing.assert_allclose(got, out[:, 0] * np.exp(1e-2 * out[:, 1]), rtol=1e-4, atol=1e-6)


def test_kernel_gradients_are_the_reference_gradients():
    arrays = random_arrays(300)
    layers = random_layers([5, 16, 16, 2])

    def through(kernel: bool):
        def loss(arrays, layers):
            if kernel:
                means = kernels.statistics_pass(features, arrays, num_features=5, block=128, interpret=True)
                step = kernels.network_pass(body, arrays, jax.lax.rsqrt(means), layers, block=128, interpret=True)
            else:
                means = kernels.reference_statistics(features, arrays)
                step = kernels.reference_network_pass(body, arrays, jax.lax.rsqrt(means), layers)
            return jnp.sum(jnp.sin(step) * arrays[1])

        return jax.grad(loss, argnums=(0, 1))(arrays, layers)

    chex.assert_trees_all_close(through(True), through(False), rtol=1e-4, atol=1e-6)


def test_kernel_rejects_bad_arrays():
    with pytest.raises(ValueError, match="flat arrays of one size"):
        kernels.statistics_pass(
            features, [jnp.ones(4), jnp.ones(5), jnp.ones(4), jnp.ones(4)], num_features=5, interpret=True
        )
    with pytest.raises(ValueError, match="power of two"):
        kernels.statistics_pass(features, random_arrays(10), num_features=5, block=100, interpret=True)


def test_optimizer_through_the_kernels_equals_the_xla_path():
    """small_mlp 32×2 with every tensor of ≥ 8 elements in the kernels (interpreted) against
    the XLA path: three steps of updates and states, and a meta-gradient through two steps."""
    params = {
        "bias": jnp.linspace(-1.0, 1.0, 3),
        "w": jax.random.normal(jax.random.key(0), (40, 30)),
        "conv": jax.random.normal(jax.random.key(1), (5, 4, 3, 2)),
    }
    grads = jax.tree.map(lambda x: jnp.sin(3 * x) + 0.1, params)
    base = small_mlp()
    theta = base.init_meta(jax.random.key(3))
    paths = {
        "interpret": dataclasses.replace(base, kernel="interpret", fused_min_size=8),
        "xla": dataclasses.replace(base, kernel="xla", fused_min_size=1 << 40),
    }

    def unroll(meta, theta, steps):
        opt = meta.transform(theta, num_steps=10)
        state, p = opt.init(params), params
        for _ in range(steps):
            updates, state = opt.update(grads, state, p)
            p = optax.apply_updates(p, jax.tree.map(lambda u: 100.0 * u, updates))
        return updates, state, p

    kernel_run, xla_run = (jax.jit(lambda t, m=m: unroll(m, t, 3)[:2])(theta) for m in paths.values())
    chex.assert_trees_all_close(kernel_run, xla_run, rtol=1e-3, atol=1e-9)
    meta_loss = lambda meta: jax.jit(
        jax.grad(lambda t: sum(jnp.sum(x**2) for x in jax.tree.leaves(unroll(meta, t, 2)[2])))
    )
    kernel_grad, xla_grad = (meta_loss(m)(theta) for m in paths.values())
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(xla_grad))
    chex.assert_trees_all_close(kernel_grad, xla_grad, atol=1e-2 * scale, rtol=0)


def test_kernel_choice_is_validated_and_chosen_by_backend():
    with pytest.raises(ValueError, match="kernel must be one of"):
        small_mlp(kernel="triton")
    with pytest.raises(ValueError, match="factored accumulators"):
        factored_mlp(kernel="pallas")
    assert small_mlp().kernel_for_backend("gpu") == "pallas"
    assert small_mlp(kernel="xla").kernel_for_backend("cpu") == "xla"
    assert small_mlp(hidden_sizes=(8, 8)).kernel_for_backend("gpu") == "xla"  # narrow: XLA fuses it
    assert factored_mlp(hidden_sizes=(32, 32)).kernel_for_backend("gpu") == "xla"


def test_tensor_means_is_one_pass_of_plain_means_with_their_gradient():
    xs = tuple(jax.random.normal(jax.random.key(i), (6, 5)) * (i + 1) for i in range(4))
    # atol: one mean is ~1e-2 of values of size ~2, where float32 summation order alone moves it 1e-8
    np.testing.assert_allclose(F.tensor_means(xs), [float(jnp.mean(x)) for x in xs], rtol=1e-6, atol=1e-7)
    weights = jnp.arange(1.0, 5.0)
    got = jax.grad(lambda xs: jnp.sum(F.tensor_means(tuple(x**2 for x in xs)) * weights))(xs)
    for g, x, w in zip(got, xs, weights):
        np.testing.assert_allclose(g, 2 * w * x / x.size, rtol=1e-6)


CONFIG = F.AccumulatorConfig(momentum_decays=(0.5, 0.9), rms_decays=(0.9,), factored_decays=(0.9,))


def test_velo_tensor_statistics_match_two_pass_numpy():
    g = jax.random.normal(jax.random.key(0), (12, 7))
    p = 0.3 * jax.random.normal(jax.random.key(1), (12, 7))
    acc, decays = F.init_accumulators(p, CONFIG), F.initial_decays(CONFIG)
    for _ in range(3):
        acc = F.update_accumulators(acc, g + 0.2, decays)
    inverse_rms, tensor = (x[0] for x in tensor_features(statistic_means(g, p, acc)[None], [2], CONFIG))
    raw = [np.asarray(f, np.float64) for f in F.raw_features(g, p, acc)]
    np.testing.assert_allclose(inverse_rms, [1 / np.sqrt(np.mean(f**2)) for f in raw], rtol=1e-5)
    m = [np.asarray(x, np.float64) for x in acc.momentum]
    root = np.sqrt(np.asarray(acc.rms[0], np.float64) + F.RSQRT_EPS)
    want = [0.1 * np.log(np.var(x) + 1e-16) for x in m]
    want += [0.1 * np.log(root.mean() + 1e-16), 0.1 * np.log(np.var(root) + 1e-16)]
    want += [0.1 * np.log(np.sqrt(np.mean(np.asarray(p, np.float64) ** 2)) + 1e-16), 0, 0, 1, 0, 0]
    np.testing.assert_allclose(tensor, want, rtol=2e-4, atol=2e-5)


FACTORED = F.AccumulatorConfig(momentum_decays=(0.5, 0.9), rms_decays=(0.9,), factored_decays=(0.9, 0.99))


def factored_state(shape, steps=3):
    g = jax.random.normal(jax.random.key(0), shape)
    p = 0.3 * jax.random.normal(jax.random.key(1), shape)
    acc, decays = F.init_accumulators(p, FACTORED), F.initial_decays(FACTORED)
    for i in range(steps):
        acc = F.update_accumulators(acc, g + 0.1 * i, decays)
    return g, p, acc


@pytest.mark.parametrize("shape, block", [((37, 300), (16, 128)), ((64, 256), (32, 256))])
def test_means_2d_equals_numpy_with_row_and_column_factors(shape, block):
    """Partial blocks in both dimensions; values mixing full arrays with row × column factors."""
    g, p, acc = factored_state(shape)
    rows, cols = zip(*[F.factored_factors(m) for m in acc.factored])
    values = lambda full, r, c: [full[0] * r[0] * c[0], jnp.square(full[1]), r[1] + 0 * full[0], full[0] * c[1]]
    got = kernels_2d.means_2d(values, [g, p], list(rows), list(cols), num_values=4, block=block, interpret=True)
    g64, p64 = np.asarray(g, np.float64), np.asarray(p, np.float64)
    r, c = [np.asarray(x, np.float64) for x in rows], [np.asarray(x, np.float64) for x in cols]
    want = [np.mean(g64 * r[0][:, None] * c[0][None, :]), np.mean(p64**2), np.mean(r[1]), np.mean(g64 * c[1][None, :])]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def velo_kernel_inputs(shape):
    """A VeLO optimizer and one matrix's inputs to its kernels: raw gradient (some entries past
    the ±1000 clip), parameters, and accumulators whose factored part is already advanced."""
    from lopt.learned import VeLOOptimizer

    meta = VeLOOptimizer(lstm_hidden=8, bank_size=4, accumulators=FACTORED)
    g, p, acc = factored_state(shape)
    g = g.at[0, :3].set(jnp.array([2500.0, -3000.0, 999.0]))
    factored = F.update_accumulators(
        F.ParamAccumulators((), (), acc.factored), jnp.clip(g, -1000, 1000), F.initial_decays(FACTORED)
    ).factored
    return meta, g, p, acc._replace(factored=factored)


def xla_advance(g, p, partial):
    """What the kernels do in registers, in plain jnp: clip, then advance momenta and rms."""
    g = jnp.clip(g, -1000.0, 1000.0)
    decays = F.initial_decays(FACTORED)
    advanced = F.update_accumulators(partial._replace(factored=()), g, decays)
    return g, p, advanced._replace(factored=partial.factored)


def test_velo_kernel_statistics_advance_accumulators_in_registers():
    """VeLO's 22 statistics (17 features with factored preconditioners, momentum and rms
    moments) from `kernel_means` — raw gradient and last step's momenta in, clipping and the
    accumulator step done inside the kernel — against the jnp path, values and gradients."""
    meta, g, p, partial = velo_kernel_inputs((40, 260))
    kernel = lambda g, p, partial: meta.kernel_means(g, p, partial, interpret=True)
    xla = lambda g, p, partial: statistic_means(*xla_advance(g, p, partial))
    np.testing.assert_allclose(
        kernel(g, p, partial), xla(g, p, partial), rtol=1e-4, atol=1e-6
    )  # float32 sums, other order
    weights = jnp.linspace(0.5, 1.5, meta.num_statistics)
    grad = lambda f: jax.grad(lambda g, p, acc: jnp.sum(f(g, p, acc) * weights), argnums=(0, 1, 2))(g, p, partial)
    chex.assert_trees_all_close(grad(kernel), grad(xla), rtol=1e-3, atol=1e-8)


def test_velo_kernel_step_writes_the_advanced_accumulators():
    meta, g, p, partial = velo_kernel_inputs((37, 300))
    num_f = FACTORED.num_features
    scalars = kernels.flat_table(jnp.concatenate([jnp.linspace(0.5, 2.0, num_f), jnp.array([3.0])])[None])
    weights = kernels.flat_table(jax.random.normal(jax.random.key(2), (1, meta.num_mlp_weights)) / 3)
    step, advanced = meta.kernel_step(g, p, partial, scalars, weights, 0, interpret=True)
    g_c, _, want = xla_advance(g, p, partial)
    chex.assert_trees_all_close(advanced, want, rtol=1e-6, atol=1e-7)
    features = F.raw_features(g_c, p, want)
    layers = per_param_mlp.unflatten_layers(weights[: meta.num_mlp_weights], meta.mlp_sizes)
    direction, magnitude = per_param_mlp.reference([f * s for f, s in zip(features, scalars[:num_f])], layers)
    np.testing.assert_allclose(
        step, meta.step_mult * direction * jnp.exp(meta.exp_mult * magnitude) * 3.0, rtol=1e-4, atol=1e-9
    )


def test_feature_means_kernel_rejects_non_matrices():
    g, p, acc = factored_state((4, 5, 6))
    with pytest.raises(ValueError, match="takes matrices"):
        F.feature_means(g, p, acc, lambda g, p, acc, pre: [g], 1, kernel=True, interpret=True)


def test_network_2d_with_runtime_weights_equals_reference():
    """The unrolled narrow network with weights read as scalars from row 1 of per-tensor tables."""
    g, p, acc = factored_state((37, 300))
    rows, cols = zip(*[F.factored_factors(m) for m in acc.factored])
    sizes = [3, 4, 4, 2]
    weights = kernels.flat_table(jax.random.normal(jax.random.key(5), (3, per_param_mlp.num_layer_weights(sizes))) / 2)
    scalars = kernels.flat_table(jnp.array([[0.5], [2.0], [-1.0]]))

    def body(full, rows, cols, scalars, layers):
        direction, magnitude = per_param_mlp.fused(
            [full[0] * rows[0] * cols[0], full[1] * scalars[0], rows[1] + 0 * full[0]], layers
        )
        return [direction * jnp.exp(0.1 * magnitude)]

    where = dict(row=1, num_scalars=1, layer_sizes=sizes)
    (got,) = kernels_2d.network_2d(
        body, [g, p], list(rows), list(cols), scalars, weights, block=(16, 128), interpret=True, **where
    )
    layers = per_param_mlp.unflatten_layers(
        weights[per_param_mlp.num_layer_weights(sizes) : 2 * per_param_mlp.num_layer_weights(sizes)], sizes
    )
    x = [
        np.asarray(v, np.float64) for v in (g * rows[0][:, None] * cols[0][None, :], 2.0 * p, rows[1][:, None] + 0 * g)
    ]
    for k, (w, b) in enumerate(layers):
        w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
        x = [sum(x[i] * w[i, j] for i in range(len(x))) + b[j] for j in range(w.shape[1])]
        x = [np.maximum(h, 0.0) for h in x] if k < len(layers) - 1 else x
    np.testing.assert_allclose(got, x[0] * np.exp(0.1 * x[1]), rtol=1e-5, atol=1e-6)
    loss = lambda f: jax.grad(
        lambda p, weights: jnp.sum(jnp.sin(f(body, [g, p], list(rows), list(cols), scalars, weights, **where)[0])),
        argnums=(0, 1),
    )
    kernel_fn = lambda *a, **k: kernels_2d.network_2d(*a, **k, block=(16, 128), interpret=True)
    reference = lambda *a, row, num_scalars, layer_sizes: kernels_2d.reference_network_2d(
        *a, row, num_scalars, layer_sizes
    )
    chex.assert_trees_all_close(loss(kernel_fn)(p, weights), loss(reference)(p, weights), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="flat_table holding row 5"):
        kernels_2d.network_2d(
            body,
            [g, p],
            list(rows),
            list(cols),
            scalars,
            weights,
            row=5,
            num_scalars=1,
            layer_sizes=sizes,
            interpret=True,
        )


def test_velo_through_the_2d_kernels_equals_the_xla_path():
    from lopt.learned import VeLOOptimizer

    params = {
        "bias": jnp.linspace(-1.0, 1.0, 30),
        "w": jax.random.normal(jax.random.key(0), (37, 77)),
        "conv": jax.random.normal(jax.random.key(1), (5, 4, 3, 2)),
    }
    grads = jax.tree.map(lambda x: jnp.sin(3 * x) + 0.1 + jnp.where(x > 2.0, 3000.0, 0.0), params)  # some past the clip
    base = VeLOOptimizer(lstm_hidden=16, bank_size=4, fused_min_size=1000)
    theta = base.init_meta(jax.random.key(3))

    def unroll(kernel, theta, steps):
        opt = dataclasses.replace(base, kernel=kernel).transform(theta, num_steps=10)
        state, p = opt.init(params), params
        for _ in range(steps):
            updates, state = opt.update(grads, state, p, loss=jnp.float32(1.0))
            p = optax.apply_updates(p, jax.tree.map(lambda u: 100.0 * u, updates))
        return updates, p

    chex.assert_trees_all_close(
        *(jax.jit(lambda t, k=k: unroll(k, t, 3)[0])(theta) for k in ("interpret", "xla")), rtol=1e-3, atol=1e-8
    )
    grads_of = lambda k: jax.jit(jax.grad(lambda t: sum(jnp.sum(x**2) for x in jax.tree.leaves(unroll(k, t, 2)[1]))))(
        theta
    )
    kernel_grad, xla_grad = grads_of("interpret"), grads_of("xla")
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(xla_grad))
    chex.assert_trees_all_close(kernel_grad, xla_grad, atol=1e-3 * scale, rtol=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        VeLOOptimizer(kernel="cuda")

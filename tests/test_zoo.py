"""The baseline zoo against the papers' update equations, transcribed independently in numpy
(float64) and run on the same gradient sequence over a pytree with a scalar, a vector, a dense
matrix and a conv kernel."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.baselines import adaptive, curvature, matrix, momentum, wrappers

SHAPES = {"scalar": (), "vector": (5,), "matrix": (4, 3), "conv": (3, 3, 2, 4)}
STEPS = 6


def _tree(rng, scale=1.0):
    return {k: scale * rng.standard_normal(s) for k, s in SHAPES.items()}


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = [_tree(rng, 0.1 * (1 + i)) for i in range(STEPS)]
    return params, grads


def run(opt, params, grads, extra=None):
    """Parameters after each step of `opt` fed the given gradients (float32 jax)."""
    opt = optax.with_extra_args_support(opt)
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = opt.init(p)
    out = []
    for i, g in enumerate(grads):
        g = g(p) if callable(g) else jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
        kwargs = extra(i, p) if extra else {}
        u, state = opt.update(g, state, p, **kwargs)
        p = optax.apply_updates(p, u)
        out.append(jax.tree.map(np.asarray, p))
    return out


def assert_trajectories(actual, expected, rtol=2e-4, atol=2e-6):
    assert len(actual) == len(expected)
    for step, (a, e) in enumerate(zip(actual, expected)):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], e[k], rtol=rtol, atol=atol, err_msg=f"step {step + 1}, {k}")


def mat(x):
    return x.reshape(-1, x.shape[-1]).T


def unmat(m, shape):
    return m.T.reshape(shape)


def numpy_adam_leaf(g, m, v, t, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), m, v


# ---------------------------------------------------------------- Adam family


def test_adamp_projects_scale_invariant_weights(problem):
    params, grads = problem
    # Step 1: the matrix's gradient is orthogonal to its weights in every output channel, so
    # the channel view flags it as scale-invariant; the other tensors are not projected.
    w = mat(params["matrix"])
    g = mat(grads[0]["matrix"])
    g = g - (np.sum(g * w, 1, keepdims=True) / np.sum(w * w, 1, keepdims=True)) * w
    grads = [dict(grads[0], matrix=unmat(g, SHAPES["matrix"])), *grads[1:]]
    lr, wd, b1, b2, eps, delta, ratio = 0.01, 0.1, 0.9, 0.999, 1e-8, 0.1, 0.1

    expected, p = [], {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    projections = []
    for t, gt in enumerate(grads, 1):
        new = {}
        for k in SHAPES:
            m[k] = b1 * m[k] + (1 - b1) * gt[k]
            v[k] = b2 * v[k] + (1 - b2) * gt[k] ** 2
            perturb = m[k] / (np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps)
            r = 1.0
            if p[k].ndim > 1:
                views = [
                    (lambda x: mat(x), lambda y, s=p[k].shape: unmat(y, s)),
                    (lambda x: x.reshape(1, -1), lambda y, s=p[k].shape: y.reshape(s)),
                ]
                for view, unview in views:
                    W, G, P = view(p[k]), view(gt[k]), view(perturb)
                    cos = np.abs(np.sum(W * G, 1)) / np.maximum(
                        np.linalg.norm(W, axis=1) * np.linalg.norm(G, axis=1), eps
                    )
                    if cos.max() < delta / math.sqrt(W.shape[1]):
                        U = W / (np.linalg.norm(W, axis=1, keepdims=True) + eps)
                        perturb = unview(P - U * np.sum(U * P, 1, keepdims=True))
                        r = ratio
                        projections.append((t, k))
                        break
            new[k] = p[k] * (1 - lr * wd * r) - lr * perturb / (1 - b1**t)
        p = new
        expected.append(p)
    assert (1, "matrix") in projections
    assert_trajectories(run(adaptive.adamp(lr, b1, b2, eps, wd, delta, ratio), params, grads), expected)


def test_diffgrad(problem):
    params, grads = problem
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    expected, p = [], dict(params)
    m, v, prev = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(3))
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            friction = 1 / (1 + np.exp(-np.abs(prev[k] - g[k])))
            p = {**p, k: p[k] - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * friction * m[k] / (np.sqrt(v[k]) + eps)}
            prev[k] = g[k]
        expected.append(p)
    assert_trajectories(run(adaptive.diffgrad(lr, b1, b2, eps), params, grads), expected)


def test_exadam(problem):
    params, grads = problem
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.05
    expected, p = [], dict(params)
    m, v = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(2))
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            d1 = 1 + v[k] / (v[k] + eps) * b2**t
            d2 = 1 + m[k] ** 2 / (m[k] ** 2 + eps) * b1**t
            m_t, v_t, g_t = m[k] / (1 - b1**t) * d1, v[k] / (1 - b2**t) * d2, g[k] / (1 - b1**t) * d1
            p = {**p, k: p[k] - lr * wd * p[k] - lr * (m_t + g_t) / (np.sqrt(v_t) + eps)}
        expected.append(p)
    assert_trajectories(run(adaptive.exadam(lr, b1, b2, eps, wd), params, grads), expected)


def test_grams(problem):
    params, grads = problem
    lr, wd = 0.01, 0.05
    expected, p = [], dict(params)
    m, v = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(2))
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            u, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t)
            p = {**p, k: p[k] - lr * (np.sign(g[k]) * np.abs(u) + wd * p[k])}
        expected.append(p)
    assert_trajectories(run(adaptive.grams(lr, weight_decay=wd), params, grads), expected)


def test_optimistic_amsgrad(problem):
    params, grads = problem
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    expected, w, half = [], dict(params), dict(params)
    theta, v, vhat = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(3))
    for g in grads:
        for k in SHAPES:
            theta[k] = b1 * theta[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            vhat[k] = np.maximum(vhat[k], v[k])
            half[k] = half[k] - lr * theta[k] / (np.sqrt(vhat[k]) + eps)
            h = b1 * theta[k] + (1 - b1) * g[k]  # predicted next momentum, prediction m_{t+1} = g_t
            w = {**w, k: half[k] - lr * h / (np.sqrt(vhat[k]) + eps)}
        expected.append(w)
    assert_trajectories(run(adaptive.optimistic_amsgrad(lr, b1, b2, eps), params, grads), expected)


@pytest.mark.parametrize("mode", ["schedule", "constant", "lr"])
def test_adamw_decoupled_modes(problem, mode):
    params, grads = problem
    alpha, wd = 0.01, 0.1
    schedule = optax.cosine_decay_schedule(1.0, STEPS)
    expected, p = [], dict(params)
    m, v = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(2))
    for t, g in enumerate(grads, 1):
        eta = 0.5 * (1 + math.cos(math.pi * (t - 1) / STEPS))
        decay = {"schedule": eta * wd, "constant": wd, "lr": eta * alpha * wd}[mode]
        for k in SHAPES:
            u, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t)
            p = {**p, k: p[k] - eta * alpha * u - decay * p[k]}
        expected.append(p)
    actual = run(adaptive.adamw_decoupled(alpha, schedule, weight_decay=wd, decay_mode=mode), params, grads)
    assert_trajectories(actual, expected)
    if mode == "lr":  # the coupled form is optax's AdamW
        reference = run(optax.adamw(lambda c: alpha * schedule(c), weight_decay=wd), params, grads)
        assert_trajectories(actual, reference)
    with pytest.raises(ValueError, match="decay_mode"):
        adaptive.adamw_decoupled(decay_mode="typo")


def test_stable_spam_with_resets(problem):
    params, grads = problem
    grads = [*grads, *[{k: 3 * x for k, x in g.items()} for g in grads]]  # spikes, 12 steps
    lr, b1, b2, eps, g1, g2, g3, interval = 0.01, 0.9, 0.999, 1e-8, 0.7, 0.9, 0.999, 5
    expected, p = [], dict(params)
    m, v = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(2))
    T, mu, nu = ({k: 0.0 for k in SHAPES} for _ in range(3))
    for t, g in enumerate(grads, 1):
        k_reset = (t - 1) % interval + 1
        for k in SHAPES:
            gmax = np.max(np.abs(g[k]))
            T[k] = g3 * T[k] + (1 - g3) * gmax
            limit = T[k] / (1 - g3**t)
            gt = np.where(np.abs(g[k]) > limit, g[k] / gmax * limit, g[k])
            n = np.linalg.norm(gt)
            mu[k] = g1 * mu[k] + (1 - g1) * n
            nu[k] = g2 * nu[k] + (1 - g2) * n * n
            gh = gt / n * (mu[k] / (1 - g1**t)) / (np.sqrt(nu[k] / (1 - g2**t)) + eps)
            if k_reset == 1:
                m[k], v[k] = np.zeros(SHAPES[k]), np.zeros(SHAPES[k])
            u, m[k], v[k] = numpy_adam_leaf(gh, m[k], v[k], k_reset, b1, b2, eps)
            p = {**p, k: p[k] - lr * u}
        expected.append(p)
    actual = run(adaptive.stable_spam(lr, b1, b2, eps, g1, g2, g3, interval), params, grads)
    assert_trajectories(actual, expected, rtol=5e-4)


# ---------------------------------------------------------------- matrix optimizers


def test_conda(problem):
    params, grads = problem
    lr, b1, b2, eps, interval = 0.01, 0.9, 0.999, 1e-8, 4
    expected, p = [], dict(params)
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    basis = {}
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            if len(SHAPES[k]) < 2:
                u, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t, b1, b2, eps)
            else:
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                M, G = mat(m[k]), mat(g[k])
                if (t - 1) % interval == 0:
                    basis[k] = np.linalg.svd(M, full_matrices=False)[0]
                U = basis[k]
                v[k] = (b2 * v[k] if t > 1 else 0.0) + (1 - b2) * (U.T @ G) ** 2
                u = unmat(U @ ((U.T @ M) / (1 - b1**t) / (np.sqrt(v[k] / (1 - b2**t)) + eps)), SHAPES[k])
            p = {**p, k: p[k] - lr * u}
        expected.append(p)
    assert_trajectories(run(matrix.conda(lr, b1, b2, eps, interval), params, grads), expected, rtol=1e-3, atol=1e-5)


def numpy_newton_schulz_inverse_sqrt(a, steps):
    norm = np.linalg.norm(a)
    y, z = a / norm, np.eye(a.shape[0])
    for _ in range(steps):
        t = 0.5 * (3 * np.eye(a.shape[0]) - z @ y)
        y, z = y @ t, t @ z
    return z / np.sqrt(norm)


def test_newton_schulz_converges_to_the_inverse_square_root():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 20))
    a = x @ x.T
    evals, evecs = np.linalg.eigh(a)
    exact = evecs @ np.diag(evals**-0.5) @ evecs.T
    approx = np.asarray(matrix.inverse_sqrt_newton_schulz(jnp.asarray(a, jnp.float32), 30))
    np.testing.assert_allclose(approx, exact, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(numpy_newton_schulz_inverse_sqrt(a, 30), exact, rtol=1e-6)


def numpy_stateless_matrix_rule(params, grads, lr, direction):
    """SWAN's and SinkGD's split in numpy: `direction(G)` on each kernel's [out, in] matrix (no
    state), Adam on the scalar and the vector; θ ← θ − η·update."""
    expected, p = [], dict(params)
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            if len(SHAPES[k]) < 2:
                u, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t)
            else:
                u = unmat(direction(mat(g[k])), SHAPES[k])
            p = {**p, k: p[k] - lr * u}
        expected.append(p)
    return expected


def test_swan_normalises_and_whitens(problem):
    params, grads = problem
    lr, eps, steps = 0.01, 1e-8, 10

    def direction(G):
        normed = (G - G.mean(1, keepdims=True)) / (G.std(1, keepdims=True) + eps)
        gram = normed @ normed.T + eps * np.eye(G.shape[0])
        whitened = numpy_newton_schulz_inverse_sqrt(gram, steps) @ normed
        return whitened * np.linalg.norm(normed) / np.linalg.norm(whitened)

    expected = numpy_stateless_matrix_rule(params, grads, lr, direction)
    assert_trajectories(
        run(matrix.swan(lr, eps=eps, whitening_steps=steps), params, grads), expected, rtol=1e-3, atol=1e-5
    )


def test_sinkgd_alternates_row_and_column_normalisations(problem):
    """Scetbon et al. 2025: L times X ← √n·X/‖rows‖, X ← √m·X/‖cols‖ (X ∈ R^{m×n}); θ ← θ − ηX;
    Adam on the scalar and the vector."""
    params, grads = problem
    lr, L = 0.01, 3

    def direction(X):
        rows, cols = X.shape
        for _ in range(L):
            X = math.sqrt(cols) * X / np.linalg.norm(X, axis=1, keepdims=True)
            X = math.sqrt(rows) * X / np.linalg.norm(X, axis=0, keepdims=True)
        return X

    expected = numpy_stateless_matrix_rule(params, grads, lr, direction)
    assert_trajectories(run(matrix.sinkgd(lr, iterations=L), params, grads), expected, rtol=1e-4, atol=1e-6)
    X = np.asarray(matrix.sinkhorn_normalise(jnp.asarray(mat(grads[0]["conv"]), jnp.float32), 20))
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), math.sqrt(X.shape[1]), rtol=1e-3)


def test_apollo_channel_scaling_and_norm_limiter(problem):
    params, grads = problem
    lr, b1, b2, eps, rank, interval, scale, gamma, seed = 0.01, 0.9, 0.999, 1e-8, 2, 3, 1.0, 1.01, 7
    expected, p = [], dict(params)
    m, v, prev = {}, {}, {}
    index = {k: i for i, k in enumerate(sorted(SHAPES))}  # flatten order of a dict: sorted keys
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            if len(SHAPES[k]) < 2:
                m.setdefault(k, np.zeros(SHAPES[k])), v.setdefault(k, np.zeros(SHAPES[k]))
                u, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t)
            else:
                G = mat(g[k])
                # The projection is random by design; it is re-derived from the documented rule.
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), index[k]), (t - 1) // interval)
                P = np.asarray(jax.random.normal(key, (rank, G.shape[0]), jnp.float32), np.float64) / math.sqrt(rank)
                R = P @ G
                m.setdefault(k, np.zeros_like(R)), v.setdefault(k, np.zeros_like(R))
                m[k] = b1 * m[k] + (1 - b1) * R
                v[k] = b2 * v[k] + (1 - b2) * R * R
                R_tilde = m[k] / (np.sqrt(v[k]) + eps)  # the reference: no bias correction here
                s = np.linalg.norm(R_tilde, axis=0) / np.linalg.norm(R, axis=0)
                scaled = scale * G * s[None, :]
                norm = np.linalg.norm(scaled)
                if t > 1 and norm > gamma * prev[k]:
                    scaled, norm = scaled * gamma * prev[k] / norm, gamma * prev[k]
                prev[k] = norm
                u = unmat(scaled * math.sqrt(1 - b2**t) / (1 - b1**t), SHAPES[k])  # ...but in the step size
            p = {**p, k: p[k] - lr * u}
        expected.append(p)
    actual = run(matrix.apollo(lr, b1, b2, eps, rank, interval, scale, gamma, seed=seed), params, grads)
    assert_trajectories(actual, expected, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- curvature and objective-based


CURVATURE = {k: 1.0 + np.arange(np.prod(s, dtype=int)).reshape(s) % 3 for k, s in SHAPES.items()}


def objective(params):
    """Separable: f = Σ ½ a θ² + ¼ θ⁴, so diag(H) = a + 3θ² and z ⊙ Hz = diag(H) for any signs z."""
    return sum(jnp.sum(0.5 * CURVATURE[k] * params[k] ** 2 + 0.25 * params[k] ** 4) for k in SHAPES)


def numpy_gradient(p):
    return {k: CURVATURE[k] * p[k] + p[k] ** 3 for k in SHAPES}


def test_adahessian_with_spatial_averaging(problem):
    params, _ = problem
    params = {k: 0.5 * x for k, x in params.items()}
    lr, b1, b2, eps, power, wd = 0.05, 0.9, 0.999, 1e-4, 1.0, 1e-3
    expected, p = [], dict(params)
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    for t in range(1, STEPS + 1):
        g = numpy_gradient(p)
        new = {}
        for k in SHAPES:
            d = CURVATURE[k] + 3 * p[k] ** 2
            if d.ndim == 4:
                d = np.broadcast_to(np.abs(d).mean(axis=(0, 1), keepdims=True), d.shape)
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * d**2
            denom = np.sqrt(v[k] / (1 - b2**t)) ** power + eps
            new[k] = p[k] - lr * ((m[k] / (1 - b1**t)) / denom + wd * p[k])
        p = new
        expected.append(p)
    opt = curvature.adahessian(lr, b1, b2, eps, power, wd)
    actual = run(opt, params, [jax.grad(objective)] * STEPS, extra=lambda i, p: {"obj_fn": objective})
    assert_trajectories(actual, expected)
    with pytest.raises(ValueError, match="objective"):
        opt.update(params, opt.init(params), params)


def test_hutchinson_is_unbiased_on_a_coupled_quadratic():
    A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]])
    f = lambda p: 0.5 * p["x"] @ jnp.asarray(A, jnp.float32) @ p["x"]  # noqa: E731
    params = {"x": jnp.ones(3)}
    estimates = jax.vmap(lambda k: curvature.hutchinson_diagonal(f, params, k)["x"])(
        jax.random.split(jax.random.key(0), 4000)
    )
    np.testing.assert_allclose(np.mean(np.asarray(estimates), 0), np.diag(A), atol=0.05)


def test_sophia_g_on_a_softmax_regression():
    """Sophia-G's Gauss-Newton-Bartlett estimate, B·ĝ², with ĝ the gradient against labels
    sampled from the model (drawn here with the documented key rule; the softmax gradient and
    the Sophia update are numpy), then optax's clipped Sophia step."""
    rng = np.random.default_rng(2)
    B, d, c = 8, 5, 3
    x, y = rng.standard_normal((B, d)), rng.integers(0, c, B)
    params = {"w": 0.3 * rng.standard_normal((d, c)), "b": np.zeros(c)}
    lr, b1, b2, gamma, wd, k, seed, eps = 0.05, 0.965, 0.99, 0.05, 1e-4, 3, 4, 1e-8

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def grad(p, labels):
        err = softmax(x @ p["w"] + p["b"]) - np.eye(c)[labels]
        return {"w": x.T @ err / B, "b": err.mean(0)}

    def sampled_loss(p, key):
        logits = jnp.asarray(x, jnp.float32) @ p["w"] + p["b"]
        labels = jax.random.categorical(key, jax.lax.stop_gradient(logits))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    expected, p = [], dict(params)
    m, h = {n: np.zeros_like(v) for n, v in params.items()}, {n: np.zeros_like(v) for n, v in params.items()}
    estimates = 0
    for t in range(1, 8):
        g = grad(p, y)
        m = {n: b1 * m[n] + (1 - b1) * g[n] for n in p}
        step = {n: np.clip(m[n] / (1 - b1**t) / np.maximum(gamma * h[n], eps), -1, 1) for n in p}
        if (t - 1) % k == 0:
            key = jax.random.fold_in(jax.random.key(seed), estimates)
            logits = x @ p["w"] + p["b"]
            sampled = np.asarray(jax.random.categorical(key, jnp.asarray(logits, jnp.float32)))
            g_hat = grad(p, sampled)
            h = {n: b2 * h[n] + (1 - b2) * B * g_hat[n] ** 2 for n in p}
            estimates += 1
        p = {n: p[n] - lr * (step[n] + wd * p[n]) for n in p}
        expected.append(p)

    opt = curvature.sophia_g(lr, b1, b2, gamma, wd, k, B, seed)
    state = opt.init(jax.tree.map(jnp.asarray, params))
    q = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    for t, want in enumerate(expected, 1):
        g = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), grad(jax.tree.map(np.asarray, q), y))
        u, state = opt.update(g, state, q, sampled_obj_fn=sampled_loss)
        q = optax.apply_updates(q, u)
        for n in want:
            np.testing.assert_allclose(np.asarray(q[n]), want[n], rtol=1e-4, atol=1e-6, err_msg=f"step {t}, {n}")


def test_xgrad_takes_the_gradient_at_the_predicted_weights(problem):
    params, _ = problem
    params = {k: 0.5 * x for k, x in params.items()}
    lr = 0.05
    expected, p, last = [], dict(params), {k: np.zeros(s) for k, s in SHAPES.items()}
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    for t in range(1, STEPS + 1):
        g = numpy_gradient({k: p[k] + last[k] for k in SHAPES})
        for k in SHAPES:
            u, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t)
            last[k] = -lr * u
        p = {k: p[k] + last[k] for k in SHAPES}
        expected.append(p)
    actual = run(
        wrappers.xgrad(optax.adam(lr)), params, [jax.grad(objective)] * STEPS, extra=lambda i, p: {"obj_fn": objective}
    )
    assert_trajectories(actual, expected)


def test_polyak_momentum(problem):
    params, grads = problem
    losses = [2.0, 1.5, 1.0, 0.8, 0.5, 0.01]
    cap, beta, c, wd = 0.5, 0.9, 1.0, 0.01
    expected, p = [], dict(params)
    d = {k: np.zeros(s) for k, s in SHAPES.items()}
    for loss, g in zip(losses, grads):
        for k in SHAPES:
            d[k] = beta * d[k] + g[k]
        tau = min(cap, loss / (c * sum(np.sum(x**2) for x in d.values())))
        p = {k: (1 - wd * tau) * p[k] - tau * d[k] for k in SHAPES}
        expected.append(p)
    opt = momentum.polyak_momentum(cap, beta, 0.0, c, wd)
    assert_trajectories(run(opt, params, grads, extra=lambda i, p: {"loss": jnp.float32(losses[i])}), expected)
    assert np.any([loss / 1 < cap for loss in losses])  # both the cap and the Polyak step are exercised
    with pytest.raises(ValueError, match="loss"):
        opt.update(params, opt.init(params), params)


def test_aegd_follows_algorithm_1(problem):
    """Liu & Tian 2020: v = g/(2√(f+c)), r ← r/(1 + 2ηv²) with r_0 = √(f_0 + c), θ ← θ − 2η r v."""
    params, grads = problem
    losses = [2.0, 1.5, 1.0, 0.8, 0.5, 0.01]
    lr, c = 0.3, 1.0
    expected, p = [], dict(params)
    r = {k: np.full(s, math.sqrt(losses[0] + c)) for k, s in SHAPES.items()}
    for loss, g in zip(losses, grads):
        for k in SHAPES:
            v = g[k] / (2 * math.sqrt(loss + c))
            r[k] = r[k] / (1 + 2 * lr * v * v)
            p = {**p, k: p[k] - 2 * lr * r[k] * v}
        expected.append(p)
    opt = momentum.aegd(lr, c)
    assert_trajectories(run(opt, params, grads, extra=lambda i, p: {"loss": jnp.float32(losses[i])}), expected)
    with pytest.raises(ValueError, match="loss"):
        opt.update(params, opt.init(params), params)


# ---------------------------------------------------------------- momentum relatives


def test_sgd_sai(problem):
    params, grads = problem
    lr, mu, wd, eps = 0.01, 0.9, 0.01, 1e-8
    snr = {
        k: 1.0 if grads[0][k].size == 1 else np.linalg.norm(grads[0][k]) / (np.std(grads[0][k]) + eps) for k in SHAPES
    }
    expected, p = [], dict(params)
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    for g in grads:
        for k in SHAPES:
            m[k] = mu * m[k] + (1 - mu) * g[k]
            p = {**p, k: (1 - lr * wd) * p[k] - lr * snr[k] * m[k]}
        expected.append(p)
    assert_trajectories(run(momentum.sgd_sai(lr, mu, wd, eps), params, grads), expected)


def test_gravity(problem):
    params, grads = problem
    lr, alpha, beta, seed = 0.1, 0.01, 0.9, 3
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    v0 = [alpha / lr * np.asarray(jax.random.normal(k, x.shape), np.float64) for k, x in zip(keys, leaves)]
    velocity = jax.tree.unflatten(tree, v0)
    expected, p = [], dict(params)
    for t, g in enumerate(grads):
        beta_hat = (beta * t + 1) / (t + 2)
        for k in SHAPES:
            M = 1 / np.max(np.abs(g[k]))
            zeta = g[k] / (1 + (g[k] / M) ** 2)
            velocity[k] = beta_hat * velocity[k] + (1 - beta_hat) * zeta
            p = {**p, k: p[k] - lr * velocity[k]}
        expected.append(p)
    assert_trajectories(run(momentum.gravity(lr, alpha, beta, seed), params, grads), expected)


# ---------------------------------------------------------------- wrappers


def test_lookahead_syncs_every_k_steps(problem):
    params, grads = problem
    lr, k_sync, alpha = 0.05, 3, 0.5
    expected, fast, slow = [], dict(params), dict(params)
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            u, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t)
            fast[k] = fast[k] - lr * u
            if t % k_sync == 0:
                slow[k] = slow[k] + alpha * (fast[k] - slow[k])
                fast[k] = slow[k].copy()
        expected.append(dict(fast))
    assert_trajectories(run(wrappers.lookahead(optax.adam(lr), k_sync, alpha), params, grads), expected)


def test_gradient_agreement_filter(problem):
    params, grads = problem
    rng = np.random.default_rng(1)
    lr, tau, count = 0.1, 0.5, 4
    micro = []
    for g in grads:  # agrees, disagrees (opposite), unrelated noise: accepted sets vary by step
        noise = _tree(rng, 0.02)
        micro.append([g, {k: g[k] + noise[k] for k in SHAPES}, {k: -g[k] for k in SHAPES}, _tree(rng, 0.2)])
    flat = lambda tree: np.concatenate([np.ravel(tree[k]) for k in sorted(SHAPES)])  # noqa: E731
    expected, p, accepted_counts = [], dict(params), []
    for step in micro:
        total, n = flat(step[0]), 1
        for g in step[1:]:
            x = flat(g)
            if 1 - x @ total / (np.linalg.norm(x) * np.linalg.norm(total)) <= tau:
                total, n = (n * total + x) / (n + 1), n + 1
        accepted_counts.append(n)
        offsets = np.cumsum([0] + [int(np.prod(SHAPES[k], dtype=int)) for k in sorted(SHAPES)])
        mean = {k: total[a:b].reshape(SHAPES[k]) for k, a, b in zip(sorted(SHAPES), offsets, offsets[1:])}
        p = {k: p[k] - lr * mean[k] for k in SHAPES}
        expected.append(p)
    assert len(set(accepted_counts)) > 1 or accepted_counts[0] not in (1, count)

    def extra(i, _):
        stacked = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs), jnp.float32), *micro[i])
        return {"microbatch_grads_fn": lambda params, m: stacked}

    opt = wrappers.gradient_agreement_filter(optax.sgd(lr), count, tau)
    assert_trajectories(run(opt, params, grads, extra=extra), expected)
    with pytest.raises(ValueError, match="microbatch"):
        opt.update(params, opt.init(params), params)


def test_ranger21_components(problem):
    params, grads = problem
    grads = [*grads, *grads]  # 12 steps: warm-up over 2 steps, warm-down from step 8.64, 2 syncs
    total = len(grads)
    lr, b1, b2, beta0, sp, clip, agc_eps, wd, nl, k_sync, alpha = (
        0.01,
        0.9,
        0.999,
        1.0,
        50.0,
        1e-2,
        1e-3,
        1e-4,
        1e-4,
        5,
        0.5,
    )
    warmup = max(1, int(0.22 * total))
    start = 0.72 * total

    def multiplier(t):
        if t > start:
            return 1 - (1 - 0.03) * min(1.0, (t - start) / (total - start))
        return min(1.0, t / warmup)

    def units(x):
        return mat(x) if x.ndim >= 2 else x.reshape(1, -1)

    def from_units(u, shape):
        return unmat(u, shape) if len(shape) >= 2 else u.reshape(shape)

    expected, p, slow = [], dict(params), dict(params)
    pos, neg, v = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(3))
    for t, g in enumerate(grads, 1):
        clean = {}
        for k in SHAPES:
            G, W = units(g[k]), units(p[k])
            limit = clip * np.maximum(np.linalg.norm(W, axis=1, keepdims=True), agc_eps)
            G = G * np.minimum(1.0, limit / np.linalg.norm(G, axis=1, keepdims=True))
            if g[k].ndim >= 2:
                G = G - G.mean(1, keepdims=True)
            clean[k] = from_units(G, SHAPES[k])
            v[k] = b2 * v[k] + (1 - b2) * clean[k] ** 2
        v_hat = {k: v[k] / (1 - b2**t) for k in SHAPES}
        variance_scale = math.sqrt(sum(x.sum() for x in v_hat.values()) / sum(x.size for x in v_hat.values()))
        current, other = (pos, neg) if t % 2 == 1 else (neg, pos)
        eta = lr * multiplier(t)
        new = {}
        for k in SHAPES:
            current[k] = b1**2 * current[k] + (1 - b1**2) * clean[k]
            d = ((1 + beta0) * current[k] - beta0 * other[k]) / math.sqrt((1 + beta0) ** 2 + beta0**2)
            d = d / (1 - (b1**2) ** ((t + 1) // 2))
            denominator = np.log1p(np.exp(sp * np.sqrt(v_hat[k]))) / sp
            unit_norm = from_units(
                np.broadcast_to(np.linalg.norm(units(p[k]), axis=1, keepdims=True), units(p[k]).shape), SHAPES[k]
            )
            decay = wd / variance_scale + 2 * nl * (1 - 1 / unit_norm)
            new[k] = p[k] - eta * (d / denominator + decay * p[k])
        p = new
        if t % k_sync == 0:
            slow = {k: slow[k] + alpha * (p[k] - slow[k]) for k in SHAPES}
            p = dict(slow)
        expected.append(p)
    opt = wrappers.ranger21(lr, total, b1, b2, beta0, sp, clip, agc_eps, wd, nl, k_sync, alpha)
    assert_trajectories(run(opt, params, grads), expected, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- every family, default settings

ZOO = (
    "adamp",
    "diffgrad",
    "exadam",
    "grams",
    "optimistic_amsgrad",
    "adamw_lh",
    "stable_spam",
    "conda",
    "swan",
    "apollo",
    "adahessian",
    "sgd_sai",
    "gravity",
    "polyak_momentum",
    "aegd",
    "ranger21",
    "xgrad_adam",
    "lookahead_adam",
    "gaf_adam",
    "sophia_g",
    "sinkgd",
    "adan",
    "galore",
    "fira",
    "frugal",
    "lion_k",
    "sania",
    "innaprop",
    "switch_ema_adam",
    "gradient_noise_adam",
    "adadagrad",
)
FAST_FAMILIES = ("mnist1d-mlp-gelu64x2", "quadratic-10-cond100", "rosenbrock-2")
SLOW_FAMILIES = ("digits-conv-16-32", "pytext-transformer-32x1")  # a minute of compiles per optimizer


def _train_families(name, families):
    from lopt import tasks
    from lopt import baselines

    entry = baselines.spec(name)
    assert name in baselines.names() and entry.source
    for task_name in families:
        task = tasks.build(tasks.task_spec(task_name))
        opt = entry.make(**({entry.run_length_argument: 40} if entry.run_length_argument else {}))
        growth = tasks.BatchGrowth(*entry.batch_growth) if entry.batch_growth else None
        run = lambda t: tasks.train(t, opt, jax.random.key(1), num_steps=40, batch_growth=growth)  # noqa: E731
        losses = np.asarray(jax.jit(lambda t: run(t).train_loss)(task))
        assert np.all(np.isfinite(losses)), f"{name} on {task_name}: {losses}"
        if task_name.startswith("mnist1d"):
            assert losses[-5:].mean() < losses[:5].mean(), f"{name} did not train {task_name}"


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_entry_trains_the_mlp_quadratic_and_rosenbrock_families(name):
    """Default hyperparameters and learning rate, 40 steps per family: every loss finite, and
    the MLP's loss ends below where it started."""
    _train_families(name, FAST_FAMILIES)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_entry_trains_the_conv_and_transformer_families(name):
    """As above on a conv net and a transformer (slow: their compiles take ~10 s each on CPU)."""
    _train_families(name, SLOW_FAMILIES)


def test_adan_follows_the_papers_algorithm_not_optax_0_2_8():
    """Xie et al. Algorithm 1 in numpy (optax β convention), with bias corrections: the gradient
    difference is weighted by b2 = 0.92 in n and in the step (optax 0.2.8 uses 1 − b2)."""
    from lopt.baselines import momentum

    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = [_tree(rng, 0.1 * (1 + i)) for i in range(STEPS)]
    lr, b1, b2, b3, eps = 0.01, 0.98, 0.92, 0.99, 1e-8
    expected, p = [], dict(params)
    m, v, n, previous = ({k: np.zeros(s) for k, s in SHAPES.items()} for _ in range(4))
    for t, g in enumerate(grads, 1):
        for k in SHAPES:
            diff = g[k] - previous[k] if t > 1 else np.zeros(SHAPES[k])
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * diff
            n[k] = b3 * n[k] + (1 - b3) * (g[k] + b2 * diff) ** 2
            step = (m[k] / (1 - b1**t) + b2 * v[k] / (1 - b2**t)) / (np.sqrt(n[k] / (1 - b3**t)) + eps)
            p = {**p, k: p[k] - lr * step}
            previous[k] = g[k]
        expected.append(p)
    assert_trajectories(run(momentum.adan(lr), params, grads), expected)
    optax_steps = run(optax.adan(lr), params, grads)
    assert not np.allclose(optax_steps[-1]["matrix"], expected[-1]["matrix"], rtol=1e-3)

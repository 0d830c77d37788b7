"""GaLore, Fira and FRUGAL against their papers' equations, transcribed in numpy (float64) and
run on one gradient sequence over a scalar, a vector, a wide matrix, a conv kernel and a tall
matrix (the two projection sides), with projector refreshes inside the run."""

import math

import jax
import numpy as np
import pytest

from lopt.baselines import lowrank
from test_zoo import mat, numpy_adam_leaf, run, unmat

SHAPES = {"scalar": (), "vector": (5,), "matrix": (4, 3), "conv": (3, 3, 2, 4), "tall": (2, 5)}
STEPS, INTERVAL = 7, 3


@pytest.fixture
def problem():
    rng = np.random.default_rng(1)
    tree = lambda scale: {k: scale * rng.standard_normal(s) for k, s in SHAPES.items()}  # noqa: E731
    return tree(1.0), [tree(0.1 * (1 + i)) for i in range(STEPS)]


def numpy_projector(G, rank):
    U, _, Vh = np.linalg.svd(G, full_matrices=False)
    P = U[:, :rank] if G.shape[0] < G.shape[1] else Vh[:rank].T
    pivot = P[np.argmax(np.abs(P), axis=0), np.arange(rank)]
    return P * np.where(pivot < 0, -1.0, 1.0)


def numpy_low_rank(kind, params, grads, lr, density, scale=0.25, gamma=1.01, free=1.0, b1=0.9, b2=0.999, eps=1e-8):
    """GaLore (Zhao et al. Alg. 2), Fira (Chen et al. eqs. for φ and the limiter), FRUGAL (Zmushko
    et al., SVD projection, state reset at each refresh) on the matrices; Adam elsewhere."""
    p, m, v, P, previous, out = dict(params), {}, {}, {}, {}, []
    for t, g in enumerate(grads, 1):
        new = {}
        for k, shape in SHAPES.items():
            if len(shape) < 2:
                m.setdefault(k, np.zeros(shape)), v.setdefault(k, np.zeros(shape))
                d, m[k], v[k] = numpy_adam_leaf(g[k], m[k], v[k], t, b1, b2, eps)
                new[k] = p[k] - lr * d
                continue
            G = mat(g[k])
            left = G.shape[0] < G.shape[1]
            rank = max(1, round(density * min(G.shape)))
            if (t - 1) % INTERVAL == 0:
                P[k] = numpy_projector(G, rank)
            R = P[k].T @ G if left else G @ P[k]
            up = (lambda X: P[k] @ X) if left else (lambda X: X @ P[k].T)
            if kind == "frugal" and (t - 1) % INTERVAL == 0 or k not in m:
                m[k], v[k] = np.zeros_like(R), np.zeros_like(R)
            if kind == "frugal":
                N, m[k], v[k] = numpy_adam_leaf(R, m[k], v[k], (t - 1) % INTERVAL + 1, b1, b2, eps)
                D = up(N) + free * np.sign(G - up(R))
            else:
                m[k] = b1 * m[k] + (1 - b1) * R
                v[k] = b2 * v[k] + (1 - b2) * R * R
                N = m[k] / (np.sqrt(v[k]) + eps)
                D = scale * up(N)
                if kind == "fira":
                    axis = 0 if left else 1
                    phi = np.linalg.norm(N, axis=axis, keepdims=True) / (
                        np.linalg.norm(R, axis=axis, keepdims=True) + 1e-8
                    )
                    S = (G - up(R)) * phi
                    norm = np.linalg.norm(S)
                    if t > 1 and norm > gamma * previous[k]:
                        S, norm = S * gamma * previous[k] / norm, gamma * previous[k]
                    previous[k] = norm
                    D = D + S
                D = D * math.sqrt(1 - b2**t) / (1 - b1**t)
            new[k] = p[k] - lr * unmat(D, shape)
        p = new
        out.append(p)
    return out


def assert_close(actual, expected, rtol=1e-3, atol=1e-5):
    for step, (a, e) in enumerate(zip(actual, expected, strict=True)):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], e[k], rtol=rtol, atol=atol, err_msg=f"step {step + 1}, {k}")


@pytest.mark.parametrize("density", [0.25, 0.7])
def test_galore(problem, density):
    params, grads = problem
    actual = run(lowrank.galore(0.05, density=density, update_interval=INTERVAL), params, grads)
    assert_close(actual, numpy_low_rank("galore", params, grads, 0.05, density))


@pytest.mark.parametrize("density", [0.25, 0.7])
def test_fira_scales_the_residual_and_limits_its_growth(problem, density):
    params, grads = problem
    actual = run(lowrank.fira(0.05, density=density, update_interval=INTERVAL), params, grads)
    assert_close(actual, numpy_low_rank("fira", params, grads, 0.05, density))
    # the gradients grow 10% or more a step: the limiter binds, and without it the run differs
    unlimited = run(lowrank.fira(0.05, density=density, update_interval=INTERVAL, norm_growth_limit=1e9), params, grads)
    assert not np.allclose(unlimited[-1]["conv"], actual[-1]["conv"], rtol=1e-4)


@pytest.mark.parametrize("density", [0.25, 0.7])
def test_frugal_resets_its_subspace_state_and_signs_the_rest(problem, density):
    params, grads = problem
    actual = run(lowrank.frugal(0.01, density=density, update_interval=INTERVAL, free_scale=0.5), params, grads)
    assert_close(actual, numpy_low_rank("frugal", params, grads, 0.01, density, free=0.5))


def test_projector_sides_ranks_and_state_memory():
    """Wide matrices project their rows, tall ones their columns; the kept moments are r × long
    side, so at ρ = 1/4 a 64 × 256 kernel keeps 2·16·256 moments (Adam: 2·64·256)."""
    import jax.numpy as jnp

    params = {"w": jnp.zeros((256, 64)), "b": jnp.zeros(64)}
    state = lowrank.frugal().init(params)[0]
    assert state.mu["w"].shape == (16, 256) and state.projector["w"].shape == (64, 16)
    assert state.mu["b"].shape == (64,)
    tall = lowrank.galore().init({"w": jnp.zeros((8, 64))})[0]  # matrix view 64 × 8: tall
    assert tall.mu["w"].shape == (64, 2) and tall.projector["w"].shape == (8, 2)
    assert lowrank.projection_rank((3, 3, 2, 4), 0.25) == 1
    P = lowrank.svd_projector(jax.random.normal(jax.random.key(0), (6, 20)), 3)
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-5)

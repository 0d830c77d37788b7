"""Lion-𝒦, SANIA, INNAprop, Switch EMA and annealed gradient noise against their papers'
equations in numpy (float64), on the zoo's pytree of a scalar, a vector, a matrix and a conv
kernel (`test_zoo.problem`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.baselines import curvature, momentum, wrappers
from test_zoo import SHAPES, assert_trajectories, mat, problem, run, unmat  # noqa: F401  (fixture)


def numpy_kappa(kind, c):
    if kind == "l1":
        return np.sign(c)
    if kind == "l2" or (kind == "nuclear" and c.ndim < 2):
        return c / np.linalg.norm(c)
    if kind == "linf":
        top = np.abs(c) == np.abs(c).max()
        return np.where(top, np.sign(c), 0.0) / top.sum()
    U, _, Vh = np.linalg.svd(mat(c), full_matrices=False)
    return unmat(U @ Vh, c.shape)


@pytest.mark.parametrize("kappa", ["l1", "l2", "linf", "nuclear"])
def test_lion_k_follows_the_papers_update(problem, kappa):
    """m ← β2 m − (1−β2) g;  x ← x + ε(∇𝒦(β1 m − (1−β1) g) − λx), in the paper's sign."""
    params, grads = problem
    lr, b1, b2, wd = 0.02, 0.9, 0.99, 0.1
    expected, p = [], dict(params)
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    for g in grads:
        new = {}
        for k in SHAPES:
            direction = numpy_kappa(kappa, np.asarray(b1 * m[k] - (1 - b1) * g[k]))
            new[k] = p[k] + lr * (direction - wd * p[k])
            m[k] = b2 * m[k] - (1 - b2) * g[k]
        p = new
        expected.append(p)
    assert_trajectories(run(momentum.lion_k(lr, b1, b2, wd, kappa), params, grads), expected)


def test_lion_k_l1_is_optax_lion(problem):
    params, grads = problem
    assert_trajectories(
        run(momentum.lion_k(1e-3, 0.9, 0.99, 0.1, "l1"), params, grads),
        run(optax.lion(1e-3, 0.9, 0.99, weight_decay=0.1), params, grads),
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize(
    "kappa,dual_ball_point",
    [
        ("l1", lambda a: np.sign(a)),  # box ‖x‖_∞ ≤ 1/λ
        ("l2", lambda a: a / np.linalg.norm(a)),  # ‖x‖₂ ≤ 1/λ
        ("linf", lambda a: np.eye(len(a))[np.argmax(np.abs(a))] * np.sign(a)),  # ‖x‖₁ ≤ 1/λ
    ],
)
def test_weight_decay_is_a_bound_constraint(kappa, dual_ball_point):
    """On f(x) = −⟨a, x⟩ (unbounded below) Lion-𝒦 with weight decay λ converges to the point of
    the dual-norm ball of radius 1/λ that maximises ⟨a, x⟩ (Chen et al. 2023, Sec. 3)."""
    a = np.array([0.3, -1.2, 0.7, 0.05])
    wd = 4.0
    opt = momentum.lion_k(0.01, 0.9, 0.99, wd, kappa)
    x = jnp.zeros(4)
    state = opt.init(x)
    for _ in range(2000):
        u, state = opt.update(jnp.asarray(-a, jnp.float32), state, x)
        x = x + u
    np.testing.assert_allclose(np.asarray(x), dual_ball_point(a) / wd, atol=2e-3)


def test_lion_k_rejects_an_unknown_kappa():
    with pytest.raises(ValueError, match="kappa 'l3'.*l1, l2, linf, nuclear"):
        momentum.lion_k(kappa="l3")


@pytest.mark.parametrize("preconditioner", ["adam_sqr", "adagrad_sqr"])
def test_sania_is_the_polyak_step_in_the_preconditioner_norm(problem, preconditioner):
    params, grads = problem
    losses = [2.0, 1.5, 1.0, 0.8, 0.5, 0.01]
    lr, b2, eps = 0.5, 0.999, 1e-30
    expected, p = [], dict(params)
    nu = {k: np.zeros(s) for k, s in SHAPES.items()}
    for t, (loss, g) in enumerate(zip(losses, grads), 1):
        B = {}
        for k in SHAPES:
            if preconditioner == "adagrad_sqr":
                nu[k] = nu[k] + g[k] ** 2
                B[k] = nu[k] + eps
            else:
                nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
                B[k] = nu[k] / (1 - b2**t) + eps
        metric = sum(np.sum(g[k] ** 2 / B[k]) for k in SHAPES)
        p = {k: p[k] - lr * loss / metric * g[k] / B[k] for k in SHAPES}
        expected.append(p)
    opt = momentum.sania(lr, preconditioner, b2, eps)
    assert_trajectories(run(opt, params, grads, extra=lambda i, p: {"loss": jnp.float32(losses[i])}), expected)
    with pytest.raises(ValueError, match="loss"):
        opt.update(params, opt.init(params), params)


def test_sania_is_invariant_to_a_diagonal_rescaling_of_the_parameters():
    """Scale invariance (the paper's point): training w' = w / s, with f'(w') = f(s w'), gives
    w' = w / s at every step for the SQR preconditioners."""
    s = jnp.array([1e-3, 1.0, 1e3])
    target = jnp.array([1.0, -2.0, 0.5])
    f = lambda w: 0.5 * jnp.sum((w - target) ** 2) + 0.1  # noqa: E731
    opt = momentum.sania(0.5)
    w, w_scaled = jnp.array([3.0, 1.0, -1.0]), jnp.array([3.0, 1.0, -1.0]) / s
    state, state_scaled = opt.init(w), opt.init(w_scaled)
    for _ in range(8):  # the Polyak steps oscillate: float32 rounding grows on longer runs
        u, state = opt.update(jax.grad(f)(w), state, w, loss=f(w))
        w = w + u
        scaled = lambda v: f(s * v)  # noqa: E731
        u, state_scaled = opt.update(jax.grad(scaled)(w_scaled), state_scaled, w_scaled, loss=scaled(w_scaled))
        w_scaled = w_scaled + u
    np.testing.assert_allclose(np.asarray(s * w_scaled), np.asarray(w), rtol=1e-5)
    assert float(jnp.abs(w - target).max()) < 1.0  # and it moved toward the minimum


def test_innaprop_follows_its_recursion(problem):
    """Bolte et al. 2024: θ ← (1−λγ)θ; v, v̂ (RMSprop); ψ ← (1−γ/β)ψ + γ(1/β−α)θ;
    θ ← (1 + γ(1−αβ)/(β−γ))θ − γ/(β−γ)ψ − γβ g/(√v̂+ε), with ψ_0 = (1−αβ)θ_0."""
    params, grads = problem
    lr, alpha, beta, sigma, eps, wd = 0.05, 0.1, 0.9, 0.999, 1e-8, 0.01
    expected, p = [], dict(params)
    psi = {k: (1 - alpha * beta) * params[k] for k in SHAPES}
    nu = {k: np.zeros(s) for k, s in SHAPES.items()}
    for t, g in enumerate(grads, 1):
        new = {}
        for k in SHAPES:
            theta = (1 - wd * lr) * p[k]
            nu[k] = sigma * nu[k] + (1 - sigma) * g[k] ** 2
            scaled = g[k] / (np.sqrt(nu[k] / (1 - sigma**t)) + eps)
            psi[k] = (1 - lr / beta) * psi[k] + lr * (1 / beta - alpha) * theta
            new[k] = (
                (1 + lr * (1 - alpha * beta) / (beta - lr)) * theta - lr / (beta - lr) * psi[k] - lr * beta * scaled
            )
        p = new
        expected.append(p)
    assert_trajectories(run(curvature.innaprop(lr, alpha, beta, sigma, eps, wd), params, grads), expected)
    with pytest.raises(ValueError, match="learning_rate < beta"):
        curvature.innaprop(1.0, beta=0.9)


def test_switch_ema_switches_the_average_in_every_period(problem):
    params, grads = problem
    lr, decay, period = 0.1, 0.7, 2
    expected, p = [], dict(params)
    average = dict(params)
    for t, g in enumerate(grads, 1):
        fast = {k: p[k] - lr * g[k] for k in SHAPES}
        average = {k: decay * average[k] + (1 - decay) * fast[k] for k in SHAPES}
        p = dict(average) if t % period == 0 else fast
        expected.append(p)
    assert_trajectories(run(wrappers.switch_ema(optax.sgd(lr), decay, period), params, grads), expected)


def test_gradient_noise_variance_anneals_as_the_paper():
    """σ_t² = η/(1+t)^γ: the empirical variance of the added noise over 200k coordinates at
    t = 0 and t = 99 (a zero gradient through SGD at unit LR shows the noise itself)."""
    eta, gamma = 0.3, 0.55
    opt = wrappers.gradient_noise(optax.sgd(1.0), eta, gamma, seed=3)
    zeros = jnp.zeros(200_000)
    state = opt.init(zeros)
    variances = []
    for _ in range(100):
        u, state = opt.update(zeros, state, zeros)
        variances.append(float(jnp.var(u)))
    for t in (0, 99):
        assert math.isclose(variances[t], eta / (1 + t) ** gamma, rel_tol=0.02), (t, variances[t])

"""Hypergradient schedulers against the paper's equations, computed independently in numpy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.hypergrad import adam_hd, current_learning_rate, hypergradient, sgd_hd, sgdn_hd, stacked

A = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.3]])
B = np.array([1.0, -2.0, 0.5])
THETA0 = np.array([0.3, -0.1, 2.0])


def quadratic_grad(theta):
    """∇ of f(θ) = ½θᵀAθ − bᵀθ."""
    return A @ theta - B


def run_optax(opt, steps, theta0=THETA0):
    """Run `opt` on the quadratic; return θ after each step and the state's LR."""
    params = {"w": jnp.asarray(theta0, jnp.float32)}
    state = opt.init(params)
    thetas, lrs = [], []
    for _ in range(steps):
        grads = {"w": jnp.asarray(quadratic_grad(np.asarray(params["w"], np.float64)), jnp.float32)}
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        thetas.append(np.asarray(params["w"]))
        if isinstance(state, lopt.hypergrad.HypergradientState):
            lrs.append(float(current_learning_rate(state)))
    return np.array(thetas), lrs


def test_sgd_hd_matches_the_papers_equations():
    """Baydin et al. Alg. 1 (SGD-HD): α_t = α_{t−1} + β g_t·g_{t−1}; θ_t = θ_{t−1} − α_t g_t."""
    alpha, beta, steps = 0.05, 0.01, 8
    theta, previous, expected, alphas = THETA0.copy(), np.zeros(3), [], []
    for _ in range(steps):
        g = quadratic_grad(theta)
        alpha = alpha + beta * g @ previous
        theta = theta - alpha * g
        previous = g
        expected.append(theta.copy())
        alphas.append(alpha)
    thetas, lrs = run_optax(sgd_hd(alpha0 := 0.05, hyper_lr=beta), steps)
    np.testing.assert_allclose(thetas, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lrs, alphas, rtol=1e-5)
    assert alphas[-1] != alpha0  # the rate really moved


def test_sgdn_hd_matches_the_papers_equations():
    """SGDN-HD: v = μv + g; θ −= α_t (g + μv); h_t = −g_t·(g_{t−1} + μ v_{t−1})."""
    alpha, beta, mu, steps = 0.05, 0.01, 0.9, 8
    theta, v, previous, expected = THETA0.copy(), np.zeros(3), np.zeros(3), []
    for _ in range(steps):
        g = quadratic_grad(theta)
        alpha = alpha + beta * g @ previous
        v = mu * v + g
        direction = g + mu * v
        theta = theta - alpha * direction
        previous = direction
        expected.append(theta.copy())
    thetas, _ = run_optax(sgdn_hd(0.05, hyper_lr=beta, momentum=mu), steps)
    np.testing.assert_allclose(thetas, expected, rtol=1e-5, atol=1e-6)


def adam_hd_reference(alpha, beta, steps, b1=0.9, b2=0.999, eps=1e-8):
    """Baydin et al. Alg. (Adam-HD), with bias correction, in numpy."""
    theta, m, v, previous, expected, alphas = THETA0.copy(), np.zeros(3), np.zeros(3), np.zeros(3), [], []
    for t in range(1, steps + 1):
        g = quadratic_grad(theta)
        alpha = alpha + beta * g @ previous  # α_t = α_{t−1} − β h_t, h_t = −g_t·m̂/(√v̂+ε) at t−1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        direction = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        theta = theta - alpha * direction
        previous = direction
        expected.append(theta.copy())
        alphas.append(alpha)
    return np.array(expected), alphas


def test_adam_hd_matches_the_papers_equations():
    expected, alphas = adam_hd_reference(0.01, 1e-3, 10)
    thetas, lrs = run_optax(adam_hd(0.01, hyper_lr=1e-3), 10)
    np.testing.assert_allclose(thetas, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lrs, alphas, rtol=1e-5)


def test_log_adam_mode_is_adam_on_the_log_learning_rate():
    """ρ_t = ρ_{t−1} + β·m̂/√v̂ with m, v Adam's moments (0.9, 0.999) of h = g_t·d_{t−1};
    α_t = α_0·exp(ρ_t); the inner direction is Adam's, all in float64 numpy."""
    from lopt.hypergrad import adam_hd_log_adam

    alpha0, beta, steps, b1, b2, eps = 1e-3, 0.05, 12, 0.9, 0.999, 1e-8
    theta, previous, m, v, hm, hv, rho, expected, alphas = THETA0.copy(), np.zeros(3), 0.0, 0.0, 0.0, 0.0, 0.0, [], []
    for t in range(1, steps + 1):
        g = quadratic_grad(theta)
        h = g @ previous
        hm, hv = b1 * hm + (1 - b1) * h, b2 * hv + (1 - b2) * h * h
        rho = rho + beta * (hm / (1 - b1**t)) / (np.sqrt(hv / (1 - b2**t)) + 1e-30)
        alpha = alpha0 * np.exp(rho)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        direction = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        theta = theta - alpha * direction
        previous = direction
        expected.append(theta.copy())
        alphas.append(alpha)
    thetas, lrs = run_optax(adam_hd_log_adam(alpha0, hyper_lr=beta, tangent_decay=0.0), steps)
    np.testing.assert_allclose(thetas, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lrs, alphas, rtol=1e-5)
    assert alphas[-1] > 1.5 * alpha0  # agreeing steps raise α by about e^β each


def test_multiplicative_and_log_modes_follow_the_cosine_rule():
    alpha0, beta, steps = 0.05, 0.1, 6
    for mode in ("multiplicative", "log"):
        theta, previous, rate, expected = THETA0.copy(), np.zeros(3), (alpha0 if mode == "multiplicative" else 0.0), []
        for _ in range(steps):
            g = quadratic_grad(theta)
            cosine = g @ previous / (np.linalg.norm(g) * np.linalg.norm(previous) + 1e-30)
            rate = rate * (1 + beta * cosine) if mode == "multiplicative" else rate + beta * cosine
            alpha = rate if mode == "multiplicative" else alpha0 * np.exp(rate)
            theta = theta - alpha * g
            previous = g
            expected.append(theta.copy())
        thetas, lrs = run_optax(hypergradient(optax.identity(), alpha0, beta, mode=mode), steps)
        np.testing.assert_allclose(thetas, expected, rtol=1e-5, atol=1e-6, err_msg=mode)
        assert min(lrs) > 0


def test_base_schedule_multiplies_the_rate_and_enters_the_hypergradient():
    """With θ_t = θ_{t−1} − b(t)·α_t·g_t, ∂θ_{t−1}/∂α = −b(t−1)·g_{t−1}."""
    alpha, beta, steps = 0.05, 0.01, 6
    schedule = lambda t: 1.0 - t / 10.0  # noqa: E731
    theta, previous, expected = THETA0.copy(), np.zeros(3), []
    for t in range(steps):
        g = quadratic_grad(theta)
        alpha = alpha + beta * g @ previous
        theta = theta - schedule(t) * alpha * g
        previous = schedule(t) * g
        expected.append(theta.copy())
    thetas, _ = run_optax(sgd_hd(0.05, hyper_lr=beta, base_schedule=schedule), steps)
    np.testing.assert_allclose(thetas, expected, rtol=1e-5, atol=1e-6)


def test_per_tensor_rates_equal_separate_runs_per_tensor():
    """One α per tensor: two tensors behave exactly as two independent SGD-HD runs."""
    opt = sgd_hd(0.05, hyper_lr=0.01, per_tensor=True)
    params = {"a": jnp.array([1.0, -1.0]), "b": jnp.array([[0.5, 2.0]])}
    loss = lambda p: jnp.sum(jnp.array([3.0, 1.0]) * p["a"] ** 2) + jnp.sum(jnp.cos(p["b"]))  # noqa: E731
    state = opt.init(params)
    separate = {k: sgd_hd(0.05, hyper_lr=0.01) for k in params}
    separate_states = {k: separate[k].init(params[k]) for k in params}
    separate_params = dict(params)
    for _ in range(5):
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        grads_s = jax.grad(loss)(separate_params)
        for k in separate:
            u, separate_states[k] = separate[k].update(grads_s[k], separate_states[k], separate_params[k])
            separate_params[k] = separate_params[k] + u
    chex.assert_trees_all_close(params, separate_params, rtol=1e-6)
    assert state.learning_rate.shape == (2,) and state.learning_rate[0] != state.learning_rate[1]


def test_validation_gradients_replace_the_training_gradient_in_the_hypergradient():
    opt = sgd_hd(0.05, hyper_lr=0.01, validation_gradients=True)
    params = {"w": jnp.asarray(THETA0, jnp.float32)}
    state = opt.init(params)
    g = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="hypergradient_grads"):
        opt.update(g, state, params)
    _, state = opt.update(g, state, params, hypergradient_grads={"w": jnp.zeros(3)})
    _, state = opt.update(g, state, params, hypergradient_grads={"w": jnp.array([2.0, 0.0, 0.0])})
    # α_2 = α_1 + β·<g_val, d_1> = 0.05 + 0.01·2
    np.testing.assert_allclose(float(state.learning_rate), 0.07, rtol=1e-6)


def test_stacked_height_one_sgd_is_sgd_hd_and_adam_lr_is_adam_hd():
    hd, _ = run_optax(sgd_hd(0.05, hyper_lr=0.01), 8)
    stack, _ = run_optax(stacked.stack([stacked.sgd(0.05), stacked.sgd(0.01)]), 8)
    np.testing.assert_allclose(stack, hd, rtol=1e-5, atol=1e-6)
    expected, _ = adam_hd_reference(0.01, 1e-3, 10)
    stack, _ = run_optax(stacked.stack([stacked.adam(0.01, learn=("lr",)), stacked.sgd(1e-3)]), 10)
    np.testing.assert_allclose(stack, expected, rtol=1e-5, atol=1e-6)


def test_stacked_height_zero_is_the_plain_optimizer():
    ours, _ = run_optax(stacked.stack([stacked.adam(0.01)]), 6)
    reference, _ = run_optax(optax.adam(0.01), 6)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_taller_stack_trains_adam_betas_within_their_clamp():
    """Height 2: adam(lr, b1, b2) trained by adam(κ...) trained by sgd; betas stay in [0, 1)."""
    opt = stacked.stack([stacked.adam(0.01), stacked.adam(1e-3, learn=("lr",)), stacked.sgd(1e-4)])
    params = {"w": jnp.asarray(THETA0, jnp.float32)}
    state = opt.init(params)
    step = jax.jit(opt.update)
    for _ in range(30):
        grads = {"w": jnp.asarray(A, jnp.float32) @ params["w"] - jnp.asarray(B, jnp.float32)}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    h0, h1 = state.hyperparams
    assert all(np.isfinite(float(v)) for v in (*h0.values(), *h1.values()))
    assert float(h0["lr"]) != 0.01 and float(h1["lr"]) != 1e-3
    assert 0 <= float(jnp.clip(h0["b1"], *stacked.BETA_CLAMP)) < 1


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown hypergradient mode"):
        hypergradient(optax.identity(), 0.1, 0.1, mode="quadratic")
    with pytest.raises(ValueError, match="hyper_lr < 1"):
        hypergradient(optax.identity(), 0.1, 1.5, mode="multiplicative")
    with pytest.raises(ValueError, match="no hyperparameter"):
        stacked.sgd(0.1, learn=("momentum",))


def test_refined_schedule_matches_the_papers_formula_and_is_linear_decay_for_constant_norms():
    """w_t ∝ Ĝ_t⁻² Σ_{p>t} Ĝ_p⁻² (Defazio et al. 2023), computed here by a plain double loop."""
    from lopt.hypergrad.refine import linear_decay, median_filter, refined_schedule, refined_weights

    T = 12
    np.testing.assert_allclose(refined_weights(np.full(T, 3.0), tau=0.1), (T - 1 - np.arange(T)) / (T - 1), atol=1e-12)
    norms = np.array([5.0, 4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25])
    expected = np.array(
        [norms[t] ** -2 * sum(norms[p] ** -2 for p in range(t + 1, len(norms))) for t in range(len(norms))]
    )
    np.testing.assert_allclose(refined_weights(norms, tau=0.1), expected / expected.max(), rtol=1e-12)
    noisy = np.array([1.0, 9.0, 1.0, 1.0, 2.0, 2.0])
    brute = [np.median(np.pad(noisy, (1, 1), mode="edge")[i : i + 3]) for i in range(len(noisy))]
    np.testing.assert_allclose(median_filter(noisy, 3), brute)
    schedule = refined_schedule(0.5, np.array([0.2, 1.0, 0.0]))
    np.testing.assert_allclose([float(schedule(t)) for t in (0, 1, 2, 7)], [0.1, 0.5, 0.0, 0.0], rtol=1e-6)
    assert float(linear_decay(2.0, 10)(5)) == 1.0
    first_power = np.array(
        [norms[t] ** -1 * sum(norms[p] ** -1 for p in range(t + 1, len(norms))) for t in range(len(norms))]
    )
    np.testing.assert_allclose(refined_weights(norms, tau=0.1, power=1.0), first_power / first_power.max(), rtol=1e-12)
    with pytest.raises(ValueError, match="finite and positive"):
        refined_weights(np.array([1.0, np.nan]))


def test_gradient_norms_trace_the_same_run_as_train():
    from lopt import tasks
    from lopt.tasks.train import gradient_norms

    task = tasks.build(tasks.MLPSpec("digits", (8,), "tanh", 32))
    key, opt = jax.random.key(3), optax.adam(1e-2)
    traced = gradient_norms(task, opt, key, num_steps=5)
    plain = tasks.train(task, opt, key, num_steps=5)
    np.testing.assert_allclose(traced.train_loss, plain.train_loss, rtol=1e-6)
    init_key, data_key, _ = jax.random.split(key, 3)
    params = task.init(init_key)
    first_key = jax.random.split(data_key, 5)[0]
    grads = jax.grad(task.loss)(params, task.batch(first_key, "train"))
    np.testing.assert_allclose(traced.l2[0], optax.tree.norm(grads), rtol=1e-5)
    np.testing.assert_allclose(
        traced.l1[0], sum(np.abs(np.asarray(g)).sum() for g in jax.tree.leaves(grads)), rtol=1e-5
    )


def test_tangent_decay_accumulates_past_steps_in_the_hypergradient():
    """With μ > 0 the hypergradient reads Z_{t−1} = μ·Z_{t−2} + d_{t−1} (log mode, SGD inner)."""
    alpha0, beta, mu, steps = 0.05, 0.1, 0.9, 6
    theta, tangent, rho, expected = THETA0.copy(), np.zeros(3), 0.0, []
    for _ in range(steps):
        g = quadratic_grad(theta)
        rho += beta * (g @ tangent) / (np.linalg.norm(g) * np.linalg.norm(tangent) + 1e-30)
        theta = theta - alpha0 * np.exp(rho) * g
        tangent = mu * tangent + g
        expected.append(theta.copy())
    thetas, _ = run_optax(hypergradient(optax.identity(), alpha0, beta, mode="log", tangent_decay=mu), steps)
    np.testing.assert_allclose(thetas, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tangent_decay"):
        hypergradient(optax.identity(), alpha0, beta, tangent_decay=1.0)


def test_fedhyper_round_matches_a_numpy_fedavg_with_hypergradient_rates():
    """Two clients, least squares f_k(w) = ½‖A_k w − b_k‖² per batch, S = 3 local steps, two
    rounds: local ρ_l += β_l·cos(g_s, g_{s−1}) per step, clients' ρ averaged by the server;
    Δ = mean(x − y_S); ρ_g += β_g·cos(Δ_t, Δ_{t−1}); x ← x − η_g·e^{ρ_g}·Δ. β = 0 is FedAvg."""
    from lopt.hypergrad import fedhyper

    rng = np.random.default_rng(0)
    A = rng.normal(size=(2, 2, 3, 4, 3))  # [round, client, step, rows, dim]
    b = rng.normal(size=(2, 2, 3, 4))
    loss = lambda w, batch: 0.5 * jnp.sum((batch["A"] @ w["w"] - batch["b"]) ** 2)  # noqa: E731
    cos = lambda u, v: u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-30)  # noqa: E731
    for beta_l, beta_g in ((0.0, 0.0), (0.3, 0.5)):
        x, rho_g, rho_l, previous = np.array([0.5, -1.0, 2.0]), 0.0, 0.0, np.zeros(3)
        state = fedhyper.init({"w": jnp.asarray(x, jnp.float32)})
        for r in range(2):
            deltas, rhos = [], []
            for k in range(2):
                y, rho, g_prev = x.copy(), rho_l, np.zeros(3)
                for s in range(3):
                    g = A[r, k, s].T @ (A[r, k, s] @ y - b[r, k, s])
                    rho += beta_l * cos(g, g_prev)
                    y = y - 0.05 * np.exp(rho) * g
                    g_prev = g
                deltas.append(x - y)
                rhos.append(rho)
            delta = np.mean(deltas, axis=0)
            rho_g += beta_g * cos(delta, previous)
            x = x - 0.7 * np.exp(rho_g) * delta
            rho_l, previous = np.mean(rhos), delta
            batches = {"A": jnp.asarray(A[r], jnp.float32), "b": jnp.asarray(b[r], jnp.float32)}
            state, _ = fedhyper.round_step(
                state, batches, loss, local_lr=0.05, global_lr=0.7, local_hyper_lr=beta_l, global_hyper_lr=beta_g
            )
            np.testing.assert_allclose(state.params["w"], x, rtol=1e-4, atol=1e-5)

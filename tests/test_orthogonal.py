"""NorMuon, AdaMuon and ortho-Adam against numpy transcriptions of their papers' equations, and
ortho-Adam against the generalist it names (lopt.baselines.orthogonal)."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt.baselines as baselines
from lopt.baselines import orthogonal
from lopt.learned import generalist as generalist_preset
from test_generalist import numpy_newton_schulz  # Muon's iteration in float64 numpy

generalist_module = importlib.import_module("lopt.learned.generalist")  # the package re-exports a function of that name


def normuon_numpy(grads: list[np.ndarray], beta=0.95, beta2=0.95, eps=1e-10) -> list[np.ndarray]:
    """Li et al. 2025, per step: M ← βM + (1−β)G; U = (1−β)G + βM; O = NS(U); per output neuron
    v ← β₂v + (1−β₂)·mean(O²); Ô = O/(√v+ε) rescaled to ‖O‖_F; × √max(1, fan_out/fan_in)."""
    m = np.zeros_like(grads[0])
    v = np.zeros(grads[0].shape[1])
    out = []
    for g in grads:
        m = beta * m + (1 - beta) * g
        o = numpy_newton_schulz((1 - beta) * g + beta * m)
        v = beta2 * v + (1 - beta2) * (o**2).mean(axis=0)
        n = o / (np.sqrt(v) + eps)
        n = n * np.linalg.norm(o) / (np.linalg.norm(n) + eps)
        out.append(n * np.sqrt(max(1.0, o.shape[1] / o.shape[0])))
    return out


def adamuon_numpy(grads: list[np.ndarray], beta=0.95, beta2=0.95, eps=1e-8, rms=0.2) -> list[np.ndarray]:
    """Si et al. 2025: momentum, NS, elementwise second moment of O, then RMS alignment to 0.2."""
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    out = []
    for g in grads:
        m = beta * m + (1 - beta) * g
        o = numpy_newton_schulz((1 - beta) * g + beta * m)
        v = beta2 * v + (1 - beta2) * o**2
        n = o / (np.sqrt(v) + eps)
        out.append(n * rms * np.sqrt(o.size) / (np.linalg.norm(n) + eps))
    return out


def ortho_adam_numpy(grads: list[np.ndarray], b1=0.9, b2=0.95, eps=1e-8) -> list[np.ndarray]:
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    out = []
    for g in grads:
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        d = numpy_newton_schulz(m / np.sqrt(v + eps))
        out.append(d / np.sqrt(np.mean(d**2) + generalist_module.OUTPUT_EPS))
    return out


@pytest.mark.parametrize("shape", [(6, 4), (4, 7)])
@pytest.mark.parametrize(
    "rule, reference",
    [
        (orthogonal.scale_by_normuon, normuon_numpy),
        (orthogonal.scale_by_adamuon, adamuon_numpy),
        (orthogonal.scale_by_ortho_adam, ortho_adam_numpy),
    ],
)
def test_matrix_rules_match_paper_equations(rule, reference, shape):
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=shape) * 10.0 ** rng.uniform(-2, 1) for _ in range(4)]
    tx = rule()
    state = tx.init({"w": jnp.zeros(shape, jnp.float32)})
    expected = reference(grads)
    for g, want in zip(grads, expected):
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state)
        np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=2e-3, atol=2e-4)


def test_normuon_reads_conv_kernels_as_fan_in_by_fan_out():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 5))
    tx = orthogonal.scale_by_normuon()
    state = tx.init({"k": jnp.zeros(kernel.shape)})
    updates, state = tx.update({"k": jnp.asarray(kernel, jnp.float32)}, state)
    assert state.second["k"].shape == (5,)
    want = normuon_numpy([kernel.reshape(-1, 5)])[0].reshape(kernel.shape)
    np.testing.assert_allclose(np.asarray(updates["k"]), want, rtol=2e-3, atol=2e-4)


def test_ortho_adam_is_the_generalists_start():
    """The generalist at init='adam' with its network's small random weights set to zero is
    exactly ortho-Adam on the same schedule: the named baseline is the start, not a likeness
    (embeddings and attention's per-head [heads, head_dim] biases take Adam in both)."""
    meta = generalist_preset()
    theta = meta.init_meta(jax.random.key(0))
    layers = []
    for i, layer in enumerate(theta["layers"]):
        keep = jnp.zeros_like(layer["w"])
        keep = keep.at[:, :2].set(1.0) if i == 0 else keep.at[:2, :2].set(1.0)
        layers.append({"w": layer["w"] * keep, "b": layer["b"]})
    clean = {**theta, "layers": layers}
    num_steps = 20
    learned = meta.transform(clean, num_steps=num_steps)
    baseline = baselines.get("ortho_adam_cosine", lr=float(jnp.exp(theta["log_learning_rate"])), num_steps=num_steps)
    rng = np.random.default_rng(2)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        },
        "Embed_0": {"embedding": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)},
        "key": {"bias": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)},
    }
    assert meta.uses_learned_rule("dense/kernel", (8, 5)) and not meta.uses_learned_rule("key/bias", (2, 3))
    s_learned, s_base = learned.init(params), baseline.init(params)
    for _ in range(4):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        u1, s_learned = learned.update(grads, s_learned, params)
        u2, s_base = baseline.update(grads, s_base, params)
        chex.assert_trees_all_close(u1, u2, rtol=1e-3, atol=1e-7)
        params = optax.apply_updates(params, u1)


@pytest.mark.parametrize("name", ["muon_cosine", "normuon_cosine", "adamuon_cosine", "ortho_adam_cosine"])
def test_scheduled_variants_follow_the_generalists_schedule(name):
    """Updates scale with warm-up + cosine: zero-ish at the end of the run, ramping at the start."""
    opt = baselines.get(name, num_steps=10)
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    state = opt.init(params)
    norms = []
    for step in range(10):
        grads = jax.tree.map(
            lambda p: jnp.full(p.shape, 0.1 + 0.01 * step) * jnp.arange(1, p.size + 1).reshape(p.shape), params
        )
        updates, state = opt.update(grads, state, params)
        norms.append(float(optax.tree.norm(updates)))
        factor = float(generalist_module.schedule_factor(jnp.int32(step), 10, "cosine", 0.05, 0.0))
        if factor == 0.0:
            assert norms[-1] < 1e-6
    assert norms[-1] < 0.1 * max(norms)

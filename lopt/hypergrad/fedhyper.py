"""FedHyper (Zhang et al. 2024, "FedHyper: A Universal and Robust Learning Rate Scheduler for
Federated Learning with Hypergradient Descent"): hypergradient learning rates for FedAvg.

One round of FedAvg (McMahan et al. 2017): every client starts from the global model x_t, takes
S local SGD steps y ← y − η_l·g on its own data and returns Δ_k = x_t − y_S; the server averages
Δ = mean_k Δ_k and steps x_{t+1} = x_t − η_g·Δ. FedHyper adapts both rates by hypergradient
descent on the same signal HD uses (Baydin et al. 2018): a rate grows when successive steps
agree and shrinks when they oppose.

- global (server) scheduler: ∂f(x_{t+1})/∂η_g ∝ −⟨Δ_{t+1}, Δ_t⟩ (the next round's update is a
  descent direction at x_{t+1}), so η_g rises while rounds agree;
- local (client) scheduler: within a client, ∂f(y_s)/∂η_l = −⟨g_s, g_{s−1}⟩ as in SGD-HD; each
  client adapts its own η_l during the round and the server averages the clients' rates for the
  next round.

Here both updates use the log-space normalised form of `lopt.hypergrad.online` (ρ += β·cos,
η = η_0·e^ρ): scale-free, positive, and robust to a poor η_0 — the paper's claim this module is
measured against (`benchmarks/fedhyper.py`). β_g = β_l = 0 is FedAvg.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

COSINE_EPS = 1e-30


class FedState(NamedTuple):
    """Global params, log server / client rates relative to their starts, and the last Δ."""

    params: Any
    log_global: jax.Array
    log_local: jax.Array
    previous: Any


def _cosine(a: Any, b: Any) -> jax.Array:
    dot = optax.tree.vdot(a, b)
    return dot / (optax.tree.norm(a) * optax.tree.norm(b) + COSINE_EPS)


def init(params: Any) -> FedState:
    return FedState(params, jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))


def round_step(
    state: FedState,
    client_batches: Any,
    loss_fn: Callable[[Any, Any], jax.Array],
    *,
    local_lr: float | jax.Array,
    global_lr: float | jax.Array = 1.0,
    local_hyper_lr: float = 0.0,
    global_hyper_lr: float = 0.0,
) -> tuple[FedState, dict[str, jax.Array]]:
    """One communication round. client_batches: a pytree whose leaves are [K clients, S local
    steps, batch, ...]; loss_fn(params, batch). Returns the new state and the round's metrics
    (mean client loss, the rates used)."""
    eta_local = local_lr * jnp.exp(state.log_local)

    def client(batches):
        def step(carry, batch):
            y, rho, previous = carry
            loss, g = jax.value_and_grad(loss_fn)(y, batch)
            rho = rho + local_hyper_lr * _cosine(g, previous)
            y = jax.tree.map(lambda p, d: p - local_lr * jnp.exp(rho) * d, y, g)
            return (y, rho, g), loss

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (y, rho, _), losses = jax.lax.scan(step, (state.params, state.log_local, zeros), batches)
        return jax.tree.map(lambda x, z: x - z, state.params, y), rho, jnp.mean(losses)

    deltas, rhos, losses = jax.vmap(client)(client_batches)
    delta = jax.tree.map(lambda d: jnp.mean(d, axis=0), deltas)
    log_global = state.log_global + global_hyper_lr * _cosine(delta, state.previous)
    eta_global = global_lr * jnp.exp(log_global)
    params = jax.tree.map(lambda x, d: x - eta_global * d, state.params, delta)
    metrics = {"loss": jnp.mean(losses), "local_lr": eta_local, "global_lr": eta_global}
    return FedState(params, log_global, jnp.mean(rhos), delta), metrics

"""A meta-learned learning-rate controller: a small network sets a log-LR multiplier each step on
top of a hand-designed base optimizer (Adam by default).

Greedy hypergradient descent adapts α from one-step information and so inherits the
short-horizon bias (Wu et al. 2018: greedy and short-horizon objectives choose learning rates
far too small). The controller sees the same signal — cos(g_t, d_{t−1}), the HD direction — plus
training progress, loss statistics and gradient-norm ratios, and is meta-trained with truncated
ES/PES over whole training runs, so it can learn warm-up, decay and when to trust the HD signal.

Per step (all scalars, so the controller costs one dot product and a few norms per step):

    features x_t = [time features (15), loss features (6, optional),
                    cos(g_t, d_{t−1}), its EMAs at 0.9 and 0.99,
                    log(‖g_t‖ / EMA_0.9 ‖g‖), log(‖g_t‖ / EMA_0.99 ‖g‖), s_{t−1} / s_max]
    s_t      = s_max · tanh(MLP(clip(x_t, ±5)) / s_max)     (soft clip at ±s_max; s_max = 3 lets
                                                             the LR range over ×1/20 .. ×20)
    Δθ_t     = base_lr · exp(s_t) · u_t                      (u_t: the base optimizer at unit LR)

The last layer starts at zero, so the untrained controller is exactly the base optimizer at
`base_learning_rate`; that is the baseline it must beat.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned import features as F
from lopt import baselines
from lopt.learned.base import LearnedKind, register
from lopt.learned.per_param_mlp import dense_init

SIGNAL_DECAYS = (0.9, 0.99)
NUM_SIGNAL_FEATURES = 1 + 2 * len(SIGNAL_DECAYS) + 1
FEATURE_CLIP = 5.0  # loss features grow without bound as the running minimum nears 0


class ControllerState(NamedTuple):
    """count; base_state: the base optimizer's state; previous_update: u_{t−1} (unit LR);
    cosine_ema, grad_norm_ema: [2] EMAs; log_multiplier: s_{t−1}; learning_rate: the last
    effective LR (for logging); loss: loss statistics."""

    count: jax.Array
    base_state: Any
    previous_update: Any
    cosine_ema: jax.Array
    grad_norm_ema: jax.Array
    log_multiplier: jax.Array
    learning_rate: jax.Array
    loss: F.LossState


@register(preset="lr_controller")
@dataclasses.dataclass(frozen=True)
class LRController(LearnedKind):
    """A `MetaOptimizer` whose theta is the controller network (see the module docstring).

    base: a `lopt.baselines` name, built at learning rate 1 (its unit-LR update u_t).
    base_learning_rate: the LR the multiplier scales (the untrained controller's LR).
    hidden_sizes: the controller MLP's widths. max_log_multiplier: s_max.
    use_loss_features: feed loss features (then `update` needs `loss=`).
    """

    kind: ClassVar[str] = "lr_controller"
    base: str = "adam"
    base_learning_rate: float = 1e-3
    hidden_sizes: tuple[int, ...] = (32, 32)
    max_log_multiplier: float = 3.0
    use_loss_features: bool = True

    def __post_init__(self) -> None:
        baselines.spec(self.base)
        if self.base_learning_rate <= 0 or self.max_log_multiplier <= 0:
            raise ValueError("base_learning_rate and max_log_multiplier must be positive")
        if not self.hidden_sizes or min(self.hidden_sizes) <= 0:
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")

    @property
    def num_features(self) -> int:
        return F.NUM_TIME_FEATURES + (F.NUM_LOSS_FEATURES if self.use_loss_features else 0) + NUM_SIGNAL_FEATURES

    def init_meta(self, key: jax.Array) -> dict[str, Any]:
        """theta: {'layers': [{'w', 'b'}, ...]}; the output layer is zero (multiplier 1)."""
        sizes = [self.num_features, *self.hidden_sizes, 1]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-2], sizes[1:-1])]
        layers.append({"w": jnp.zeros((sizes[-2], 1), jnp.float32), "b": jnp.zeros((1,), jnp.float32)})
        return {"layers": layers}

    def log_multiplier(self, theta: dict[str, Any], x: jax.Array) -> jax.Array:
        """s = s_max·tanh(MLP(x)/s_max) for one feature vector x."""
        *hidden, last = theta["layers"]
        for layer in hidden:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        raw = (x @ last["w"] + last["b"])[0]
        return self.max_log_multiplier * jnp.tanh(raw / self.max_log_multiplier)

    def transform(self, theta: dict[str, Any], *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
        base = baselines.get(self.base, lr=1.0)

        def init(params):
            zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
            return ControllerState(
                count=jnp.zeros((), jnp.int32),
                base_state=base.init(params),
                previous_update=zeros,
                cosine_ema=jnp.zeros(len(SIGNAL_DECAYS), jnp.float32),
                grad_norm_ema=jnp.zeros(len(SIGNAL_DECAYS), jnp.float32),
                log_multiplier=jnp.zeros((), jnp.float32),
                learning_rate=jnp.asarray(self.base_learning_rate, jnp.float32),
                loss=F.init_loss_state(),
            )

        def update(grads, state, params=None, *, loss=None, **extra_args):
            loss_state = state.loss
            if self.use_loss_features:
                if loss is None:
                    raise ValueError("this LRController uses loss features: call update(..., loss=loss)")
                loss_state = F.update_loss_state(loss_state, loss)
            g = [x.astype(jnp.float32) for x in jax.tree.leaves(grads)]
            u = [x.astype(jnp.float32) for x in jax.tree.leaves(state.previous_update)]
            dot = sum(jnp.vdot(a, b) for a, b in zip(g, u))
            g_norm = jnp.sqrt(sum(jnp.vdot(a, a) for a in g))
            u_norm = jnp.sqrt(sum(jnp.vdot(b, b) for b in u))
            cosine = -dot / (g_norm * u_norm + 1e-30)  # u = −d, so this is cos(g_t, d_{t−1})
            decays = jnp.asarray(SIGNAL_DECAYS, jnp.float32)
            first = state.count == 0
            cosine_ema = decays * state.cosine_ema + (1 - decays) * cosine
            norm_ema = jnp.where(first, g_norm, decays * state.grad_norm_ema + (1 - decays) * g_norm)
            norm_ratio = jnp.log((g_norm + 1e-30) / (norm_ema + 1e-30))
            parts = [F.time_features(state.count, num_steps)]
            if self.use_loss_features:
                parts.append(F.loss_features(loss_state, loss))
            parts.append(jnp.stack([cosine, *cosine_ema, *norm_ratio, state.log_multiplier / self.max_log_multiplier]))
            s = self.log_multiplier(theta, jnp.clip(jnp.concatenate(parts), -FEATURE_CLIP, FEATURE_CLIP))
            learning_rate = self.base_learning_rate * jnp.exp(s)
            unit, base_state = base.update(grads, state.base_state, params, loss=loss, **extra_args)
            updates = jax.tree.map(lambda x: (learning_rate * x).astype(x.dtype), unit)
            new_state = ControllerState(
                count=state.count + 1,
                base_state=base_state,
                previous_update=jax.tree.map(lambda x: x.astype(jnp.float32), unit),
                cosine_ema=cosine_ema,
                grad_norm_ema=norm_ema,
                log_multiplier=s,
                learning_rate=learning_rate,
                loss=loss_state,
            )
            return updates, new_state

        return optax.GradientTransformationExtraArgs(init, update)

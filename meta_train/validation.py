"""Scoring theta on held-out tasks during meta-training: the single `run.eval_task` curve and
the `run.validation_tasks` score that picks the `best/` checkpoint."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.meta_train.config import MetaTrainConfig
from lopt.tasks import build, task_spec, train


class Validation:
    """The validation tasks of `run.validation_tasks`, each compiled once with theta as an
    argument (so a new theta costs a run, not a compile), scored against Adam 1e-3 from the
    same keys."""

    LOSS_FLOOR = 1e-6

    def __init__(self, config: MetaTrainConfig, meta_optimizer: Any):
        self.num_steps = config.run.eval_steps
        self.tasks = {name: build(task_spec(name)) for name in config.run.validation_tasks}
        self.seeds = config.run.validation_seeds
        num_steps, keys = self.num_steps, jax.random.split(jax.random.key(54321), self.seeds)

        def final_loss(opt, task):
            losses = jax.vmap(lambda k: train(task, opt, k, num_steps=num_steps).train_loss)(keys)
            return jnp.mean(losses[:, -max(1, num_steps // 10) :], axis=1)  # per seed

        self._learned = jax.jit(
            lambda theta, task: final_loss(meta_optimizer.transform(theta, num_steps=num_steps), task)
        )
        self.adam = {
            name: float(jnp.mean(jax.jit(lambda task: final_loss(optax.adam(1e-3), task))(task)))
            for name, task in self.tasks.items()
        }

    def score(self, theta: Any) -> dict[str, float]:
        """Per task, log(final loss ÷ Adam's), both means over the seeds; 'validation_score' is
        their mean over tasks, and 'validation_seed_spread' the standard deviation over seeds of
        the same score computed from each seed's runs alone (the noise a change must beat)."""
        scores, per_seed = {}, []
        for name, task in self.tasks.items():
            losses = np.asarray(self._learned(theta, task), np.float64)
            # Losses are floored at LOSS_FLOOR: below it (a memorised dataset) differences are noise.
            floor = lambda x: np.maximum(x, self.LOSS_FLOOR)
            adam = floor(self.adam[name])
            finite = np.all(np.isfinite(losses))
            scores[f"validation/{name}"] = float(np.log(floor(losses.mean()) / adam)) if finite else float("inf")
            per_seed.append(np.log(floor(losses) / adam) if finite else np.full(losses.shape, np.inf))
        scores["validation_score"] = float(np.mean(list(scores.values())))
        seed_scores = np.mean(per_seed, axis=0)
        scores["validation_seed_spread"] = float(np.std(seed_scores, ddof=1)) if seed_scores.size > 1 else 0.0
        return scores


def held_out_loss(config: MetaTrainConfig, opt: optax.GradientTransformation) -> float:
    """Final train loss (mean of the last 10% of steps) of `run.eval_task` trained with `opt`
    from a fixed key, so successive evaluations are comparable."""
    run = config.run
    task = build(task_spec(run.eval_task))
    result = jax.jit(lambda t, k: train(t, opt, k, num_steps=run.eval_steps))(task, jax.random.key(12345))
    losses = np.asarray(result.train_loss)
    return float(losses[-max(1, len(losses) // 10) :].mean())


def adam_reference(config: MetaTrainConfig) -> float:
    return held_out_loss(config, optax.adam(1e-3))

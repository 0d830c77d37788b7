"""The `lopt hpo` job: gradient-based hyperparameter optimisation of a small classifier on embedded
data, by Self-Tuning Networks or by implicit differentiation (see configs/hpo/).

- method "stn": weight decay, dropout and label smoothing tuned in one training run
  (`lopt.hypergrad.stn`, MacKay et al. 2019).
- method "ift": one weight decay per weight, and optionally a data-augmentation network, tuned
  by implicit-function-theorem hypergradients during full-batch training
  (`lopt.hypergrad.implicit` / `augment`, Lorraine et al. 2020).

Each run also trains the same model at the starting hyperparameters, so the table says what the
tuning changed. The training examples and the validation examples (which drive the tuning) come
from the dataset's training split; the test loss is on its official test split, which the tuning
never sees. Writes results.json, results.md and hyperparameters.png into `output_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.config import ConfigError, check_output_dir
from lopt.hypergrad import augment, implicit, stn
from lopt.jobdir import JOB_FILES, claim

METHODS = ("stn", "ift")
DATASETS = ("digits", "mnist1d")
FILES = JOB_FILES["hpo"]


@dataclasses.dataclass(frozen=True)
class HPOConfig:
    """What to tune, on what, and for how long.

    method: "stn" or "ift". dataset: "digits" or "mnist1d" (embedded; no download).
    train_examples / validation_examples: drawn without overlap from the training split.
    steps: weight steps (minibatch Adam 1e-3, batch 64, for stn; full-batch Adam 1e-2 for ift).
    hidden: the MLP's hidden widths.
    start_*: starting hyperparameters (stn tunes all three; ift starts every per-weight decay at
      start_weight_decay).
    hyper_learning_rate: Adam's step on the (unconstrained) hyperparameters.
    hyper_schedule (stn): 'constant', 'cosine' or 'warmup' (`lopt.hypergrad.stn.STNConfig`).
    fixed_fraction (stn): the last part of the run at the final hyperparameters, no hyper steps.
    checkpoint_every (stn): score the validation set every so many weight steps and report the best
      checkpoint's weights and hyperparameters (0: the last); the start's baseline run is
      early-stopped alike.
    train_per_hyper (stn): weight steps per hyper step. hyper_every (ift): weight steps between
      hyper steps; neumann_terms: terms of the truncated Neumann series (the paper's Algorithm 3).
    augment (ift): also tune a data-augmentation network (`lopt.hypergrad.augment`).
    """

    method: str = "stn"
    dataset: str = "digits"
    train_examples: int = 300
    validation_examples: int = 300
    steps: int = 4000
    hidden: tuple[int, ...] = (256, 256)
    start_weight_decay: float = 1e-4
    start_dropout: float = 0.1
    start_label_smoothing: float = 0.05
    hyper_learning_rate: float = 3e-3
    hyper_schedule: str = "constant"
    fixed_fraction: float = 0.0
    checkpoint_every: int = 100
    train_per_hyper: int = 2
    hyper_every: int = 25
    neumann_terms: int = 20
    augment: bool = False
    seed: int = 0
    output_dir: str = "runs/hpo"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        for key in (
            "train_examples",
            "validation_examples",
            "steps",
            "train_per_hyper",
            "hyper_every",
            "neumann_terms",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if not self.hidden or min(self.hidden) <= 0:
            raise ConfigError(f"hidden must list positive widths, got {list(self.hidden)}")
        if not self.hyper_learning_rate > 0:
            raise ConfigError(f"hyper_learning_rate must be > 0, got {self.hyper_learning_rate}")
        if self.augment and self.method != "ift":
            raise ConfigError("augment = true needs method = 'ift' (STN tunes weight decay, dropout and smoothing)")
        check_output_dir("output_dir", self.output_dir)
        try:
            self.stn_config()
        except stn.HyperError as error:
            raise ConfigError(str(error)) from None

    def stn_config(self) -> stn.STNConfig:
        return stn.STNConfig(
            hidden=self.hidden,
            start=(
                ("weight_decay", self.start_weight_decay),
                ("dropout", self.start_dropout),
                ("label_smoothing", self.start_label_smoothing),
            ),
            steps=self.steps,
            hyper_learning_rate=self.hyper_learning_rate,
            hyper_schedule=self.hyper_schedule,
            fixed_fraction=self.fixed_fraction,
            checkpoint_every=self.checkpoint_every,
            train_per_hyper=self.train_per_hyper,
        )


def split(config: HPOConfig) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """(train, validation, test) as flat float inputs and integer labels."""
    from lopt.tasks.datasets import digits, mnist1d

    data = {"digits": digits, "mnist1d": mnist1d}[config.dataset]()
    x = np.asarray(data.train_x).reshape(len(data.train_x), -1)
    y = np.asarray(data.train_y)
    need = config.train_examples + config.validation_examples
    if need > len(x):
        raise ConfigError(
            f"train_examples + validation_examples = {need} exceeds {config.dataset}'s {len(x)} training examples"
        )
    order = np.random.default_rng(config.seed).permutation(len(x))
    tr, va = order[: config.train_examples], order[config.train_examples : need]
    test_x = np.asarray(data.test_x).reshape(len(data.test_x), -1)
    return tuple(
        (jnp.asarray(a), jnp.asarray(b)) for a, b in ((x[tr], y[tr]), (x[va], y[va]), (test_x, np.asarray(data.test_y)))
    )


def _stn(config: HPOConfig, train, val, test) -> dict[str, Any]:
    settings = config.stn_config()
    key = jax.random.key(config.seed)
    result = stn.run(settings, train, val, 10, key)
    start = dict(settings.start)
    baseline = stn.train_fixed(
        start, train, 10, key, hidden=config.hidden, steps=config.steps,
        validation=val, checkpoint_every=config.checkpoint_every,
    )  # fmt: skip
    return {
        "start": start,
        "final": result.hyperparameters,
        "trajectory": {n: v.tolist() for n, v in result.trajectory.items()},
        "x_per_point": config.train_per_hyper,
        "start_loss": {s: float(stn.validation_loss(baseline, *d)) for s, d in (("validation", val), ("test", test))},
        "final_loss": {s: stn.evaluate(result, *d, settings.names) for s, d in (("validation", val), ("test", test))},
    }


def _ift(config: HPOConfig, train, val, test) -> dict[str, Any]:
    """Full-batch Adam 1e-2 on cross-entropy + ½ Σ exp(λ_i) w_i², every `hyper_every` steps one
    Adam step on λ (and the augmenter's weights) along the IFT hypergradient at the current
    weights (a truncated Neumann series, unchecked: the paper's use during training)."""
    sizes = (train[0].shape[1], *config.hidden, 10)
    key_w, key_a, key_n = jax.random.split(jax.random.key(config.seed), 3)
    weights0 = stn.init_mlp(key_w, sizes)
    log_decay0 = jax.tree.map(lambda p: jnp.full_like(p, np.log(config.start_weight_decay)), weights0)
    phi0 = augment.init(key_a, sizes[0]) if config.augment else {}
    draws = augment.noise(key_n, train[0].shape[0], 4, phi0, sizes[0]) if config.augment else None

    def data_loss(w, x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(stn.apply_mlp(w, x), y))

    def train_loss(w, hyper):
        log_decay, phi = hyper
        decay = 0.5 * sum(jnp.sum(jnp.exp(ld) * p**2) for ld, p in zip(jax.tree.leaves(log_decay), jax.tree.leaves(w)))
        if config.augment:
            return augment.training_loss(data_loss, *train, draws)(w, phi) + decay
        return data_loss(w, *train) + decay

    def val_loss(w, hyper):
        return data_loss(w, *val)

    opt, hyper_opt = optax.adam(1e-2), optax.adam(config.hyper_learning_rate)

    @jax.jit
    def step(w, state, hyper):
        updates, state = opt.update(jax.grad(train_loss)(w, hyper), state, w)
        return optax.apply_updates(w, updates), state

    def fit(hyper, tune: bool):
        w, s = weights0, opt.init(weights0)
        hs = hyper_opt.init(hyper)
        trace = []
        for t in range(config.steps):
            w, s = step(w, s, hyper)
            if tune and (t + 1) % config.hyper_every == 0:
                grad = implicit.hypergradient(
                    train_loss, val_loss, w, hyper, solver="neumann", iterations=config.neumann_terms,
                    alpha=0.01, tolerance=None,
                ).grad  # fmt: skip
                updates, hs = hyper_opt.update(grad, hs, hyper)
                hyper = optax.apply_updates(hyper, updates)
                trace.append(float(np.exp(np.mean(np.concatenate([np.ravel(a) for a in jax.tree.leaves(hyper[0])])))))
        return w, hyper, trace

    w_start, _, _ = fit((log_decay0, phi0), tune=False)
    w_final, (log_decay, _), trace = fit((log_decay0, phi0), tune=True)
    decays = np.exp(np.concatenate([np.ravel(a) for a in jax.tree.leaves(log_decay)]))
    return {
        "start": {"weight_decay": config.start_weight_decay, "augment": "identity" if config.augment else "none"},
        "final": {
            "weight_decay (geometric mean)": float(np.exp(np.mean(np.log(decays)))),
            "weight_decay (10th-90th percentile)": [float(np.percentile(decays, 10)), float(np.percentile(decays, 90))],
            "hyperparameters tuned": int(decays.size + sum(a.size for a in jax.tree.leaves(phi0))),
        },
        "trajectory": {"weight_decay (geometric mean)": trace},
        "x_per_point": config.hyper_every,
        "start_loss": {s: float(data_loss(w_start, *d)) for s, d in (("validation", val), ("test", test))},
        "final_loss": {s: float(data_loss(w_final, *d)) for s, d in (("validation", val), ("test", test))},
    }


def _write(folder: Path, name: str, text: str) -> None:
    staging = folder / f".{name}.tmp"
    staging.write_text(text)
    os.replace(staging, folder / name)


def run_hpo(config: HPOConfig) -> dict[str, Any]:
    """Run the job; returns its results (also written to output_dir) and the table's lines."""
    folder = claim(config.output_dir, "hpo", key="output_dir")
    start = time.perf_counter()
    train, val, test = split(config)
    try:
        outcome = (_stn if config.method == "stn" else _ift)(config, train, val, test)
    except (stn.HyperError, FloatingPointError) as error:
        raise ConfigError(f"{config.method} did not produce finite hyperparameters: {error}") from None
    outcome.update(method=config.method, dataset=config.dataset, config=dataclasses.asdict(config))
    outcome["seconds"] = time.perf_counter() - start
    lines = [
        f"lopt hpo: {config.method} on {config.dataset} ({config.train_examples} training / "
        f"{config.validation_examples} validation examples, {config.steps} steps); cross-entropy, lower is better",
        "",
        "| | hyperparameters | validation loss | test loss |",
        "|---|---|---:|---:|",
        f"| start | {_show(outcome['start'])} | {outcome['start_loss']['validation']:.4f} | "
        f"{outcome['start_loss']['test']:.4f} |",
        f"| tuned | {_show(outcome['final'])} | {outcome['final_loss']['validation']:.4f} | "
        f"{outcome['final_loss']['test']:.4f} |",
    ]
    outcome["table"] = lines
    _write(folder, "results.json", json.dumps(outcome, indent=1))
    _write(folder, "results.md", "\n".join(lines) + "\n")
    _plot(outcome, folder / "hyperparameters.png")
    outcome["files"] = {n: str(folder / n) for n in ("results.md", "results.json", "hyperparameters.png")}
    return outcome


def _show(values: dict[str, Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, list):
            return "–".join(f"{x:.2g}" for x in v)
        return str(v)

    return ", ".join(f"{k} {one(v)}" for k, v in values.items())


def _plot(outcome: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = outcome["trajectory"]
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        ax.plot(np.arange(1, len(values) + 1) * outcome["x_per_point"], values)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("weight step")
        if "decay" in name:
            ax.set_yscale("log")
    fig.tight_layout()
    staging = path.with_name(".hyperparameters.png.tmp.png")
    fig.savefig(staging, dpi=110)
    plt.close(fig)
    os.replace(staging, path)

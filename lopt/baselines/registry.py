"""One registry of hand-designed optimizers: default hyperparameters with their source, an LR grid.
The entries here are the common methods and the rules closest to lopt's learned ones; the rest
of the zoo (from the literature, implemented in this package) is `lopt.baselines.zoo.ZOO`.

Every entry builds an `optax.GradientTransformationExtraArgs` from a learning rate and keyword
overrides. The learning-rate grid is what `lopt eval` sweeps per task (the tuned baseline is the
fair one); grids are half-decade log grids around each method's usual range.
"""

from __future__ import annotations

from typing import Any

import optax
import optax.contrib

from lopt.baselines import momentum, orthogonal
from lopt.baselines.entry import ADAPTIVE_GRID, LION_GRID, LR_FREE_GRID, SGD_GRID, Baseline, GrowthRule, log_grid
from lopt.baselines.zoo import ZOO
from lopt.hypergrad import online as _hd

__all__ = ["ADAPTIVE_GRID", "LION_GRID", "LR_FREE_GRID", "SGD_GRID", "Baseline", "GrowthRule", "log_grid"]


def _sgd(learning_rate: Any, momentum: float | None = None, nesterov: bool = False):
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _adam_for_muon(learning_rate: Any, beta: float = 0.95, adam_b1: float = 0.9, adam_b2: float = 0.999):
    return optax.contrib.muon(learning_rate, beta=beta, adam_b1=adam_b1, adam_b2=adam_b2)


def _adamw_cosine(
    learning_rate: Any,
    num_steps: int = 1000,
    warmup_fraction: float = 0.05,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
):
    """AdamW whose learning rate warms up linearly over `warmup_fraction` of the run, then
    follows a cosine decay to 0 at `num_steps` (Loshchilov & Hutter 2017, 2019)."""
    warmup = max(1, int(round(warmup_fraction * num_steps)))
    shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(num_steps, warmup + 1), 0.0)
    return optax.adamw(lambda count: learning_rate * shape(count), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _lion_cosine(
    learning_rate: Any, num_steps: int = 1000, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3
):
    """Lion on the generalist's warm-up + cosine schedule: Chen et al. 2023 train Lion with
    warm-up and cosine decay, as they do AdamW; the decay is scaled by the scheduled rate, as in
    their Algorithm 2."""
    return optax.lion(orthogonal.warmup_cosine(learning_rate, num_steps), b1=b1, b2=b2, weight_decay=weight_decay)


def _muon_cosine(learning_rate: Any, num_steps: int = 1000, beta: float = 0.95):
    """optax's Muon on the generalist's warm-up + cosine schedule."""
    return optax.contrib.muon(orthogonal.warmup_cosine(learning_rate, num_steps), beta=beta)


def _normuon_cosine(learning_rate: Any, num_steps: int = 1000, beta: float = 0.95, beta2: float = 0.95):
    return orthogonal.normuon(orthogonal.warmup_cosine(learning_rate, num_steps), beta=beta, beta2=beta2)


def _adamuon_cosine(learning_rate: Any, num_steps: int = 1000, beta: float = 0.95, beta2: float = 0.95):
    return orthogonal.adamuon(orthogonal.warmup_cosine(learning_rate, num_steps), beta=beta, beta2=beta2)


def _ortho_adam_cosine(learning_rate: Any, num_steps: int = 1000, b1: float = 0.9, b2: float = 0.95):
    return orthogonal.ortho_adam(orthogonal.warmup_cosine(learning_rate, num_steps), b1=b1, b2=b2)


def _mechanic(learning_rate: Any, weight_decay: float = 0.01):
    return optax.contrib.mechanize(optax.adam(learning_rate), weight_decay=weight_decay)


def _schedule_free_adamw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, weight_decay: float = 0.0):
    return optax.contrib.schedule_free_adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def _sophia(
    learning_rate: Any,
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.01,
    weight_decay: float = 1e-4,
    update_interval: int = 10,
):
    return optax.contrib.sophia(
        learning_rate, b1=b1, b2=b2, gamma=gamma, weight_decay=weight_decay, update_interval=update_interval
    )


def _schedule_free_eval(opt_state: Any, params: Any) -> Any:
    return optax.contrib.schedule_free_eval_params(opt_state, params)


_ENTRIES = (
    Baseline("sgd", _sgd, 0.1, {}, SGD_GRID, "Robbins & Monro 1951"),
    Baseline(
        "momentum", _sgd, 0.03, {"momentum": 0.9}, SGD_GRID, "Polyak 1964; momentum 0.9 as in Sutskever et al. 2013"
    ),
    Baseline(
        "nesterov",
        _sgd,
        0.03,
        {"momentum": 0.9, "nesterov": True},
        SGD_GRID,
        "Nesterov 1983; momentum 0.9 as in Sutskever et al. 2013",
    ),
    Baseline(
        "adam",
        optax.adam,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
        ADAPTIVE_GRID,
        "Kingma & Ba 2015 (Algorithm 1 defaults)",
    ),
    Baseline(
        "adamw",
        optax.adamw,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
        ADAPTIVE_GRID,
        "Loshchilov & Hutter 2019; weight decay 1e-4 as optax",
    ),
    Baseline(
        "adamw_cosine",
        _adamw_cosine,
        1e-3,
        {"warmup_fraction": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
        ADAPTIVE_GRID,
        "Loshchilov & Hutter 2017/2019 (linear warm-up over 5% of the run, cosine decay to 0; decay 1e-4 as optax)",
        run_length_argument="num_steps",
    ),
    Baseline(
        "nadamw",
        optax.nadamw,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
        ADAPTIVE_GRID,
        "Dozat 2016 with decoupled weight decay (AlgoPerf's NAdamW baseline)",
    ),
    Baseline(
        "lion",
        optax.lion,
        1e-4,
        {"b1": 0.9, "b2": 0.99, "weight_decay": 1e-3},
        LION_GRID,
        "Chen et al. 2023 (b1 0.9, b2 0.99; weight decay 1e-3 as optax)",
    ),
    Baseline(
        "lion_cosine",
        _lion_cosine,
        1e-4,
        {"b1": 0.9, "b2": 0.99, "weight_decay": 1e-3},
        LION_GRID,
        "Chen et al. 2023 on the generalist's warm-up + cosine schedule (linear warm-up over 5%, cosine decay to 0)",
        run_length_argument="num_steps",
    ),
    Baseline(
        "adafactor",
        optax.adafactor,
        1e-2,
        {"decay_rate": 0.8, "clipping_threshold": 1.0},
        log_grid(1e-3, 1.0),
        "Shazeer & Stern 2018 (decay exponent 0.8, update clipping 1.0)",
    ),
    Baseline(
        "adabelief", optax.adabelief, 1e-3, {"b1": 0.9, "b2": 0.999, "eps": 1e-16}, ADAPTIVE_GRID, "Zhuang et al. 2020"
    ),
    Baseline(
        "adan",
        momentum.adan,
        1e-3,
        {"b1": 0.98, "b2": 0.92, "b3": 0.99, "eps": 1e-8},
        ADAPTIVE_GRID,
        "Xie et al. 2022, Algorithm 1 (lopt's own: optax 0.2.8 weights the gradient difference by 1 − b2)",
    ),
    Baseline(
        "lamb",
        optax.lamb,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "weight_decay": 0.0},
        ADAPTIVE_GRID,
        "You et al. 2020",
    ),
    Baseline(
        "lars",
        optax.lars,
        0.1,
        {"momentum": 0.9, "trust_coefficient": 0.001, "weight_decay": 0.0},
        log_grid(1e-3, 10.0),
        "You et al. 2017 (trust coefficient 1e-3, momentum 0.9)",
    ),
    Baseline(
        "rmsprop", optax.rmsprop, 1e-3, {"decay": 0.9, "eps": 1e-8}, ADAPTIVE_GRID, "Tieleman & Hinton 2012 (decay 0.9)"
    ),
    Baseline(
        "adagrad",
        optax.adagrad,
        1e-2,
        {"initial_accumulator_value": 0.1, "eps": 1e-7},
        log_grid(1e-3, 1.0),
        "Duchi et al. 2011",
    ),
    Baseline(
        "yogi",
        optax.yogi,
        1e-2,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-3},
        ADAPTIVE_GRID,
        "Zaheer et al. 2018 (eps 1e-3, lr 1e-2)",
    ),
    Baseline("radam", optax.radam, 1e-3, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}, ADAPTIVE_GRID, "Liu et al. 2020"),
    Baseline("amsgrad", optax.amsgrad, 1e-3, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}, ADAPTIVE_GRID, "Reddi et al. 2018"),
    Baseline(
        "novograd",
        optax.novograd,
        1e-2,
        {"b1": 0.9, "b2": 0.25, "weight_decay": 0.0},
        log_grid(1e-3, 1.0),
        "Ginsburg et al. 2019 (b2 0.25)",
    ),
    Baseline("sm3", optax.sm3, 0.1, {"momentum": 0.9}, log_grid(1e-3, 1.0), "Anil et al. 2019"),
    Baseline(
        "ademamix",
        optax.contrib.ademamix,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "b3": 0.9999, "alpha": 5.0},
        ADAPTIVE_GRID,
        "Pagliardini et al. 2024 (b3 0.9999, alpha 5)",
    ),
    Baseline(
        "madgrad",
        optax.contrib.madgrad,
        1e-2,
        {"momentum": 0.9, "eps": 1e-6},
        log_grid(1e-4, 1.0),
        "Defazio & Jelassi 2021",
    ),
    Baseline(
        "muon",
        _adam_for_muon,
        2e-2,
        {"beta": 0.95},
        log_grid(1e-3, 1.0),
        "Jordan et al. 2024 (momentum 0.95, Newton-Schulz orthogonalisation; on non-matrix tensors optax's "
        "Adam branch with nesterov=True, i.e. NAdam)",
    ),
    Baseline(
        "muon_cosine",
        _muon_cosine,
        2e-2,
        {"beta": 0.95},
        log_grid(1e-3, 1.0),
        "Jordan et al. 2024, on the generalist's schedule (linear warm-up over 5%, cosine decay to 0)",
        run_length_argument="num_steps",
    ),
    Baseline(
        "normuon",
        orthogonal.normuon,
        2e-2,
        {"beta": 0.95, "beta2": 0.95},
        log_grid(1e-3, 1.0),
        "Li et al. 2025, arXiv 2510.05491 (momentum 0.95, per-neuron second moment 0.95; NAdam elsewhere)",
    ),
    Baseline(
        "normuon_cosine",
        _normuon_cosine,
        2e-2,
        {"beta": 0.95, "beta2": 0.95},
        log_grid(1e-3, 1.0),
        "Li et al. 2025 on the generalist's warm-up + cosine schedule",
        run_length_argument="num_steps",
    ),
    Baseline(
        "adamuon",
        orthogonal.adamuon,
        3e-3,
        {"beta": 0.95, "beta2": 0.95},
        ADAPTIVE_GRID,
        "Si et al. 2025, arXiv 2507.11005 (momentum, Newton-Schulz, elementwise second moment, RMS 0.2)",
    ),
    Baseline(
        "adamuon_cosine",
        _adamuon_cosine,
        3e-3,
        {"beta": 0.95, "beta2": 0.95},
        ADAPTIVE_GRID,
        "Si et al. 2025 on the generalist's warm-up + cosine schedule",
        run_length_argument="num_steps",
    ),
    Baseline(
        "ortho_adam_cosine",
        _ortho_adam_cosine,
        3e-3,
        {"b1": 0.9, "b2": 0.95},
        ADAPTIVE_GRID,
        "lopt: the generalist's hand-designed start (Newton-Schulz of Adam's direction, unit RMS, "
        "warm-up + cosine; Adam 0.9/0.95 elsewhere)",
        run_length_argument="num_steps",
    ),
    Baseline(
        "sophia",
        _sophia,
        1e-3,
        {"b1": 0.965, "b2": 0.99, "gamma": 0.01},
        ADAPTIVE_GRID,
        "Liu et al. 2023 (Sophia-H: Hutchinson diagonal every 10 steps, gamma 0.01; optax bias-corrects m)",
    ),
    Baseline(
        "prodigy",
        optax.contrib.prodigy,
        1.0,
        {"betas": (0.9, 0.999), "weight_decay": 0.0},
        LR_FREE_GRID,
        "Mishchenko & Defazio 2023 (learning-rate multiplier 1)",
    ),
    Baseline("dog", optax.contrib.dog, 1.0, {}, LR_FREE_GRID, "Ivgi et al. 2023 (multiplier 1)"),
    Baseline("dowg", optax.contrib.dowg, 1.0, {}, LR_FREE_GRID, "Khaled et al. 2023 (multiplier 1)"),
    Baseline(
        "schedule_free_adamw",
        _schedule_free_adamw,
        2.5e-3,
        {"b1": 0.9, "b2": 0.999},
        ADAPTIVE_GRID,
        "Defazio et al. 2024 (AlgoPerf self-tuning winner)",
        eval_params=_schedule_free_eval,
    ),
    Baseline(
        "mechanic",
        _mechanic,
        1e-3,
        {"weight_decay": 0.01},
        ADAPTIVE_GRID,
        "Cutkosky et al. 2023 (mechanize around adam)",
    ),
    Baseline(
        "sgd_hd",
        _hd.sgd_hd,
        1e-3,
        {"hyper_lr": 1e-3},
        SGD_GRID,
        "Baydin et al. 2018 (SGD-HD: initial LR 1e-3, hypergradient LR 1e-3)",
    ),
    Baseline(
        "sgdn_hd",
        _hd.sgdn_hd,
        1e-3,
        {"hyper_lr": 1e-3, "momentum": 0.9},
        SGD_GRID,
        "Baydin et al. 2018 (SGDN-HD: Nesterov 0.9, initial LR 1e-3, hypergradient LR 1e-3)",
    ),
    Baseline(
        "adam_hd",
        _hd.adam_hd,
        1e-3,
        {"hyper_lr": 1e-7},
        ADAPTIVE_GRID,
        "Baydin et al. 2018 (Adam-HD: initial LR 1e-3, hypergradient LR 1e-7)",
    ),
    Baseline(
        "adam_hd_log",
        _hd.adam_hd_log,
        1e-3,
        {"hyper_lr": 0.02},
        ADAPTIVE_GRID,
        "Adam with log-space normalised HD (lopt; cosine signal as Baydin et al.'s multiplicative rule)",
    ),
    Baseline(
        "adam_hd_log_adam",
        _hd.adam_hd_log_adam,
        1e-3,
        {"hyper_lr": 0.1, "tangent_decay": 0.99},
        ADAPTIVE_GRID,
        "Adam whose log LR is trained by Adam on the hypergradient along a decaying tangent (lopt; "
        "Baydin et al. 2018, Chandra et al. 2022, Donini et al. 2020)",
    ),
    Baseline(
        "adam_hd_tangent",
        _hd.adam_hd_tangent,
        1e-3,
        {"hyper_lr": 0.2, "tangent_decay": 0.99},
        ADAPTIVE_GRID,
        "Adam with log-space normalised HD along a decaying tangent (lopt; Baydin et al. 2018, Donini et al. 2020)",
    ),
)

REGISTRY: dict[str, Baseline] = {entry.name: entry for entry in (*_ENTRIES, *ZOO)}


def names() -> tuple[str, ...]:
    """All registered optimizer names, in registry order."""
    return tuple(REGISTRY)


def spec(name: str) -> Baseline:
    """The registry entry for `name`; unknown names list the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def get(
    name: str, lr: Any = None, *, learning_rate: Any = None, **overrides: Any
) -> optax.GradientTransformationExtraArgs:
    """Build optimizer `name` with its documented defaults, overridden by keyword arguments.

    >>> opt = get("adamw", lr=1e-3)
    """
    if lr is not None and learning_rate is not None:
        raise TypeError("pass either lr or learning_rate, not both")
    return spec(name).make(lr if lr is not None else learning_rate, **overrides)

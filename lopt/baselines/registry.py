"""One registry of hand-designed optimizers: default hyperparameters with their source, an LR grid.

Every entry builds an `optax.GradientTransformationExtraArgs` from a learning rate and keyword
overrides. The learning-rate grid is what `lopt eval` sweeps per task (the tuned baseline is the
fair one); grids are half-decade log grids around each method's usual range.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import optax
import optax.contrib

from lopt.baselines import adaptive, curvature, lowrank, matrix, momentum, orthogonal, wrappers
from lopt.hypergrad import online as _hd

EvalParamsFn = Callable[[Any, Any], Any]


def log_grid(low: float, high: float, per_decade: int = 2) -> tuple[float, ...]:
    """Log-spaced values from `low` to `high` inclusive, `per_decade` points per decade, rounded
    to one significant digit (1e-4, 3e-4, 1e-3, ...)."""
    count = int(round(np.log10(high / low) * per_decade)) + 1
    return tuple(float(f"{v:.1g}") for v in np.logspace(np.log10(low), np.log10(high), count))


ADAPTIVE_GRID = log_grid(1e-4, 3e-1)
SGD_GRID = log_grid(1e-3, 3.0)
LION_GRID = log_grid(1e-5, 3e-2)
LR_FREE_GRID = log_grid(0.03, 10.0)


class GrowthRule(NamedTuple):
    """An adaptive batch-size rule as data (Lau, Liu & Kolar 2024's AdAdaGrad): `test` ('norm' or
    'inner_product'), its `constant`, and the largest batch as a multiple of the task's. lopt
    itself never trains a model; `tasks.train.BatchGrowth(*rule)` is the loop that runs it."""

    test: str = "norm"
    constant: float = 0.5
    max_multiple: int = 8


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A registered optimizer.

    name: registry key.
    factory: builds the transformation; takes the learning rate as its first argument.
    learning_rate: the default learning rate (or LR multiplier for LR-free methods).
    defaults: the other hyperparameters, as passed to `factory`.
    lr_grid: the learning rates a tuned comparison sweeps.
    source: where the defaults come from.
    eval_params: maps (opt_state, params) to the point to evaluate, for methods whose gradient
      point differs from their output (schedule-free); None otherwise.
    run_length_argument: the factory's keyword for the run length (Ranger21's warm-down needs
      it); `lopt eval` passes its number of steps there. None when the method does not use it.
    batch_growth: an adaptive batch-size scheme the training loop runs with this optimizer, as
      plain data (`GrowthRule`: AdAdaGrad's test, its constant and the largest batch multiple;
      the training loop, `tasks.train.BatchGrowth`, implements it); None for a fixed batch.
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    learning_rate: float
    defaults: Mapping[str, Any]
    lr_grid: tuple[float, ...]
    source: str
    eval_params: EvalParamsFn | None = None
    run_length_argument: str | None = None
    batch_growth: GrowthRule | None = None

    def accepted_arguments(self) -> tuple[str, ...]:
        params = list(inspect.signature(self.factory).parameters)
        return tuple(p for p in params if p not in ("learning_rate",))

    def make(self, learning_rate: Any = None, **overrides: Any) -> optax.GradientTransformationExtraArgs:
        """Build the optimizer at `learning_rate` (default: the entry's) with `overrides`."""
        accepted = self.accepted_arguments()
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise TypeError(
                f"{self.name} has no hyperparameter {', '.join(map(repr, unknown))}; "
                f"valid: learning_rate (or lr), {', '.join(accepted)}"
            )
        lr = self.learning_rate if learning_rate is None else learning_rate
        kwargs = {**self.defaults, **overrides}
        return optax.with_extra_args_support(self.factory(lr, **kwargs))


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


def _xgrad_adam(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, horizon: float = 1.0):
    return wrappers.xgrad(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), horizon=horizon)


def _lookahead_adam(
    learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, sync_period: int = 5, alpha: float = 0.5
):
    return wrappers.lookahead(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), sync_period, alpha)


def _gaf_adam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    num_microbatches: int = 4,
    threshold: float = 0.97,
):
    return wrappers.gradient_agreement_filter(
        optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), num_microbatches, threshold
    )


def _switch_ema_adam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay: float = 0.99,
    switch_period: int = 100,
):
    return wrappers.switch_ema(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), decay, switch_period)


def _gradient_noise_adam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eta: float = 0.01,
    gamma: float = 0.55,
    seed: int = 0,
):
    return wrappers.gradient_noise(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), eta, gamma, seed)


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

_ZOO = (
    Baseline(
        "adamp",
        adaptive.adamp,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "delta": 0.1, "wd_ratio": 0.1},
        ADAPTIVE_GRID,
        "Heo et al. 2021 (delta 0.1, wd_ratio 0.1)",
    ),
    Baseline(
        "diffgrad", adaptive.diffgrad, 1e-3, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}, ADAPTIVE_GRID, "Dubey et al. 2019"
    ),
    Baseline(
        "exadam", adaptive.exadam, 1e-3, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}, ADAPTIVE_GRID, "Adly 2024 (Algorithm 1)"
    ),
    Baseline("grams", adaptive.grams, 1e-3, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}, ADAPTIVE_GRID, "Cao et al. 2024"),
    Baseline(
        "optimistic_amsgrad",
        adaptive.optimistic_amsgrad,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
        ADAPTIVE_GRID,
        "Wang et al. 2021 (last-gradient prediction)",
    ),
    Baseline(
        "adamw_lh",
        adaptive.adamw_decoupled,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4, "decay_mode": "schedule"},
        ADAPTIVE_GRID,
        "Loshchilov & Hutter 2019 (Algorithm 2: decay not scaled by the base LR)",
    ),
    Baseline(
        "stable_spam",
        adaptive.stable_spam,
        1e-3,
        {"gamma1": 0.7, "gamma2": 0.9, "gamma3": 0.999, "reset_interval": 1000},
        ADAPTIVE_GRID,
        "Huang et al. 2025 (gamma 0.7 / 0.9 / 0.999, reset every 1,000 steps)",
    ),
    Baseline(
        "conda",
        matrix.conda,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "update_interval": 200},
        ADAPTIVE_GRID,
        "Wang et al. 2025 (full-rank subspace, refreshed every 200 steps)",
    ),
    Baseline(
        "swan",
        matrix.swan,
        1e-3,
        {"eps": 1e-8, "whitening_steps": 10},
        ADAPTIVE_GRID,
        "Ma et al. 2025 (GradNorm + GradWhitening by 10 Newton-Schulz steps, Adam on non-matrix tensors)",
    ),
    Baseline(
        "sinkgd",
        matrix.sinkgd,
        1e-3,
        {"iterations": 5},
        ADAPTIVE_GRID,
        "Scetbon et al. 2025 (SR-Sinkhorn row/column normalisation, stateless; L 5 is lopt's choice; "
        "Adam on non-matrix tensors as swan)",
    ),
    Baseline(
        "apollo",
        matrix.apollo,
        1e-3,
        {"update_interval": 200, "scale": 1.0, "norm_growth_limit": 1.01},
        ADAPTIVE_GRID,
        "Zhu et al. 2025 (channel-wise, rank fan_out/4, T 200, gamma 1.01)",
    ),
    Baseline(
        "adahessian",
        curvature.adahessian,
        0.15,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-4, "hessian_power": 1.0},
        log_grid(1e-3, 1.0),
        "Yao et al. 2021 (lr 0.15, eps 1e-4, Hessian power 1)",
    ),
    Baseline(
        "sophia_g",
        curvature.sophia_g,
        1e-3,
        {"b1": 0.965, "b2": 0.99, "gamma": 0.05, "update_interval": 10},
        ADAPTIVE_GRID,
        "Liu et al. 2024 (Sophia-G: Gauss-Newton-Bartlett estimator every 10 steps, gamma 0.05)",
    ),
    Baseline(
        "sgd_sai",
        momentum.sgd_sai,
        1e-3,
        {"momentum": 0.9, "weight_decay": 0.0},
        log_grid(1e-5, 1e-1),
        "Xu et al. 2024 (momentum 0.9; g-SNR from the first gradient)",
    ),
    Baseline(
        "gravity",
        momentum.gravity,
        0.1,
        {"alpha": 0.01, "beta": 0.9},
        log_grid(1e-3, 1.0),
        "Bahrami & Zadeh 2021 (lr 0.1, alpha 0.01, beta 0.9)",
    ),
    Baseline(
        "aegd",
        momentum.aegd,
        0.1,
        {"c": 1.0},
        log_grid(1e-3, 1.0),
        "Liu & Tian 2020 (AEGD, Algorithm 1: c 1, learning rate 0.1; reads the minibatch loss)",
    ),
    Baseline(
        "polyak_momentum",
        momentum.polyak_momentum,
        1.0,
        {"momentum": 0.9, "c": 1.0, "lower_bound": 0.0},
        log_grid(1e-2, 10.0),
        "Wang, Johansson & Zhang 2023 (ALR-SMAG; the LR caps the Polyak step)",
    ),
    Baseline(
        "ranger21",
        wrappers.ranger21,
        1e-3,
        {"weight_decay": 1e-4, "normloss_factor": 1e-4},
        ADAPTIVE_GRID,
        "Wright & Demeure 2021 (all eight components, Lookahead 5 / 0.5)",
        run_length_argument="num_iterations",
    ),
    Baseline(
        "xgrad_adam",
        _xgrad_adam,
        1e-3,
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "horizon": 1.0},
        ADAPTIVE_GRID,
        "Guan et al. 2024 (one-step weight prediction around adam)",
    ),
    Baseline(
        "lookahead_adam",
        _lookahead_adam,
        1e-3,
        {"sync_period": 5, "alpha": 0.5},
        ADAPTIVE_GRID,
        "Zhang et al. 2019 (k 5, alpha 0.5, around adam)",
    ),
    Baseline(
        "gaf_adam",
        _gaf_adam,
        1e-3,
        {"num_microbatches": 4, "threshold": 0.97},
        ADAPTIVE_GRID,
        "Chaubard et al. 2024 (4 microbatches, cosine-distance threshold 0.97, around adam)",
    ),
    Baseline(
        "galore",
        lowrank.galore,
        0.01,
        {"density": 0.25, "update_interval": 200, "scale": 0.25},
        ADAPTIVE_GRID,
        "Zhao et al. 2024 (LLaMA-60M: rank 128 of 512, T 200, alpha 0.25, lr 0.01)",
    ),
    Baseline(
        "fira",
        lowrank.fira,
        0.01,
        {"density": 0.25, "update_interval": 200, "scale": 0.25, "norm_growth_limit": 1.01},
        ADAPTIVE_GRID,
        "Chen et al. 2024 (LLaMA-60M script: rank 128 of 512, T 200, alpha 0.25, lr 0.01; limiter 1.01)",
    ),
    Baseline(
        "frugal",
        lowrank.frugal,
        1e-3,
        {"density": 0.25, "update_interval": 200, "free_scale": 1.0},
        ADAPTIVE_GRID,
        "Zmushko et al. 2024 (density 0.25, T 200, state-free signSGD at the same LR; SVD projection)",
    ),
    Baseline(
        "lion_k",
        momentum.lion_k,
        0.03,
        {"b1": 0.9, "b2": 0.99, "weight_decay": 0.0, "kappa": "l2"},
        log_grid(1e-3, 1.0),
        "Chen, Liu, Liang & Liu 2023 (Lion-K, K = l2 norm per tensor; Lion's betas; "
        "lr 0.03 is lopt's: each tensor moves by lr in l2)",
    ),
    Baseline(
        "sania",
        momentum.sania,
        0.1,
        {"preconditioner": "adam_sqr", "b2": 0.999},
        LR_FREE_GRID,
        "Abdukhakimov et al. 2023 (SANIA Adam-SQR; reads the minibatch loss; multiplier 0.1 is lopt's: at 1 "
        "an MLP diverges in its first steps, where the direction is ~1/g)",
    ),
    Baseline(
        "innaprop",
        adaptive.innaprop,
        1e-3,
        {"alpha": 0.1, "beta": 0.9, "sigma": 0.999, "eps": 1e-8, "weight_decay": 0.01},
        ADAPTIVE_GRID,
        "Bolte et al. 2024 ((alpha, beta) = (0.1, 0.9), the paper's short-run choice; AdamW's decay)",
    ),
    Baseline(
        "switch_ema_adam",
        _switch_ema_adam,
        1e-3,
        {"decay": 0.99, "switch_period": 100},
        ADAPTIVE_GRID,
        "Li et al. 2024 (Switch EMA around adam; switch every 100 steps with decay 0.99, lopt's for epoch-free runs)",
    ),
    Baseline(
        "adadagrad",
        optax.adagrad,
        0.1,
        {"initial_accumulator_value": 0.0, "eps": 1e-8},
        SGD_GRID,
        "Lau, Liu & Kolar 2024 (AdAdaGrad: AdaGrad with the norm test, eta 0.5 (lopt's), batch growing "
        "to 8x the task's)",
        batch_growth=GrowthRule("norm", 0.5, 8),
    ),
    Baseline(
        "gradient_noise_adam",
        _gradient_noise_adam,
        1e-3,
        {"eta": 0.01, "gamma": 0.55},
        ADAPTIVE_GRID,
        "Neelakantan et al. 2015 (annealed Gaussian noise, eta 0.01, gamma 0.55, around adam)",
    ),
)

REGISTRY: dict[str, Baseline] = {entry.name: entry for entry in (*_ENTRIES, *_ZOO)}


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

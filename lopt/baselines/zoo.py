"""The optimizer zoo: methods from the literature implemented in `lopt.baselines` (and optax's
contrib), each with its paper's defaults and an LR grid. Registered with the rest by
`lopt.baselines.registry`."""

from __future__ import annotations

from typing import Any

import optax
import optax.contrib

from lopt.baselines import adaptive, curvature, lowrank, matrix, momentum, wrappers
from lopt.baselines.entry import ADAPTIVE_GRID, LR_FREE_GRID, SGD_GRID, Baseline, GrowthRule, log_grid


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


ZOO = (
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
        curvature.innaprop,
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

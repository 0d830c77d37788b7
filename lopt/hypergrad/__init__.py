"""Hypergradient learning-rate schedulers: online HD (Baydin et al. 2018), stacked hyperoptimizers
(Chandra et al. 2022), and schedule refinement from a previous run's gradient norms (Defazio et al.
2023), FedHyper's federated schedulers (Zhang et al. 2024), and exact metagradients through whole
training runs in O(√T) memory (`exact`, Engstrom et al. 2025) and hypergradients by the implicit
function theorem at trained weights (`implicit`, Lorraine et al. 2020; `augment`: a data-augmentation
network as its hyperparameters), and Self-Tuning Networks for weight decay, dropout and label
smoothing in one run (`stn`, MacKay et al. 2019). The meta-learned LR controller is a
learned optimizer: `lopt.learned.LRController`."""

from lopt.hypergrad import augment, exact, fedhyper, implicit, refine, stacked, stn
from lopt.hypergrad.online import (
    HypergradientState,
    adam_hd,
    adam_hd_log,
    adam_hd_log_adam,
    adam_hd_tangent,
    current_learning_rate,
    hypergradient,
    sgd_hd,
    sgdn_hd,
)

__all__ = [
    "augment",
    "exact",
    "fedhyper",
    "implicit",
    "refine",
    "stacked",
    "stn",
    "HypergradientState",
    "adam_hd",
    "adam_hd_log",
    "adam_hd_log_adam",
    "adam_hd_tangent",
    "current_learning_rate",
    "hypergradient",
    "sgd_hd",
    "sgdn_hd",
]

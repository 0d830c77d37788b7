"""Hypergradient learning-rate schedulers: online HD (Baydin et al. 2018), stacked
hyperoptimizers (Chandra et al. 2022) and a meta-learned LR controller."""

from lopt.hypergrad import stacked
from lopt.hypergrad.controller import ControllerState, LRController
from lopt.hypergrad.online import (
    HypergradientState, adam_hd, adam_hd_log, current_learning_rate, hypergradient, sgd_hd, sgdn_hd,
)

__all__ = [
    "stacked", "ControllerState", "LRController", "HypergradientState", "adam_hd", "adam_hd_log",
    "current_learning_rate", "hypergradient", "sgd_hd", "sgdn_hd",
]

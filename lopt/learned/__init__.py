"""Learned optimizers: per-parameter MLP, factored MLP, VeLO-style hypernetwork, the Celo2-class
generalist, the permutation-equivariant UNF optimizer and the meta-learned LR controller; `KINDS`
and `PRESETS` are their one registry."""

from lopt.learned.base import KINDS, PRESETS, LearnedKind, MetaOptimizer, from_config, preset, register, to_config
from lopt.learned.controller import ControllerState, LRController
from lopt.learned.features import AccumulatorConfig
from lopt.learned.generalist import GeneralistOptimizer, GeneralistState, generalist
from lopt.learned.mlp import MLPOptimizer, MLPOptimizerState, factored_mlp, small_mlp
from lopt.learned.unf import UNFOptimizer, unf
from lopt.learned.velo import VeLOOptimizer, VeLOState, velo_small

__all__ = [
    "KINDS",
    "PRESETS",
    "LearnedKind",
    "MetaOptimizer",
    "from_config",
    "preset",
    "register",
    "to_config",
    "ControllerState",
    "LRController",
    "AccumulatorConfig",
    "MLPOptimizer",
    "MLPOptimizerState",
    "factored_mlp",
    "small_mlp",
    "VeLOOptimizer",
    "VeLOState",
    "velo_small",
    "GeneralistOptimizer",
    "GeneralistState",
    "generalist",
    "UNFOptimizer",
    "unf",
]

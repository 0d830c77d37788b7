"""Meta-parameterised per-parameter optimizers: MLP, factored MLP, VeLO-style hypernetwork."""

from lopt.learned.base import KINDS, MetaOptimizer, from_config, register, to_config
from lopt.learned.features import AccumulatorConfig
from lopt.learned.generalist import GeneralistOptimizer, GeneralistState, generalist
from lopt.learned.mlp import MLPOptimizer, MLPOptimizerState, factored_mlp, small_mlp
from lopt.learned.velo import VeLOOptimizer, VeLOState, velo_small

__all__ = [
    "KINDS", "MetaOptimizer", "from_config", "register", "to_config", "AccumulatorConfig",
    "MLPOptimizer", "MLPOptimizerState", "factored_mlp", "small_mlp", "VeLOOptimizer",
    "VeLOState", "velo_small", "GeneralistOptimizer", "GeneralistState", "generalist",
]

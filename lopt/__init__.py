"""lopt: learned optimizers in JAX. Every optimizer here is an optax transformation.

opt = lopt.load("checkpoints/<name>")            # a trained optimizer
opt = lopt.baselines.get("adamw", lr=1e-3)       # a hand-designed one
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

# The training layer lives in the checkout's top-level folders tasks/, meta_train/ and eval/ and
# installs as lopt.tasks, lopt.meta_train and lopt.eval (pyproject.toml's package-dir), so nothing
# generic lands in site-packages. A checkout used without installing it (PYTHONPATH=<checkout>,
# as on a device machine) gets the same names from this finder.
_CHECKOUT = Path(__file__).resolve().parent.parent
_LAYER = ("tasks", "meta_train", "eval")


class _CheckoutLayer(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        name = fullname.partition("lopt.")[2]
        if fullname.startswith("lopt.") and name in _LAYER:
            folder = _CHECKOUT / name
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )
        return None


if (_CHECKOUT / "pyproject.toml").is_file() and all((_CHECKOUT / n / "__init__.py").is_file() for n in _LAYER):
    if not any(isinstance(finder, _CheckoutLayer) for finder in sys.meta_path):
        sys.meta_path.append(_CheckoutLayer())

from lopt import baselines, hypergrad, learned, programs  # noqa: E402
from lopt.checkpoint import CheckpointError, load, load_meta, read_manifest, save, shipped  # noqa: E402
from lopt.learned import MetaOptimizer  # noqa: E402

__all__ = [
    "baselines",
    "hypergrad",
    "learned",
    "programs",
    "CheckpointError",
    "load",
    "load_meta",
    "read_manifest",
    "save",
    "shipped",
    "MetaOptimizer",
]
__version__ = "0.1.0"

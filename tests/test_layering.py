"""The layering the design fixes: `lopt` (what users import) imports none of the training layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DISPATCH = Path(__file__).resolve().parents[1] / "lopt" / "learned" / "dispatch.py"


def test_import_lopt_imports_no_training_layer():
    code = (
        "import lopt, lopt.baselines, lopt.learned, lopt.programs, lopt.hypergrad, sys; "
        "layer = ('lopt.tasks', 'lopt.meta_train', 'lopt.eval', 'tasks', 'meta_train', 'eval'); "
        "print(sorted(m for m in layer if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_dispatch_is_a_leaf():
    """`lopt.learned.dispatch` decides where work runs and is told what is available: importing
    it loads no other lopt module (no import circle through the native kernel)."""
    code = (
        "import sys, importlib.util; "
        f"spec = importlib.util.spec_from_file_location('dispatch', {str(DISPATCH)!r}); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lopt', 'tasks', 'meta_train', 'eval')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout

"""The layering the design fixes: `lopt` (what users import) imports none of the training layer."""

from __future__ import annotations

import subprocess
import sys


def test_import_lopt_imports_no_training_layer():
    code = (
        "import lopt, lopt.baselines, lopt.learned, lopt.programs, lopt.hypergrad, sys; "
        "print(sorted(m for m in ('tasks', 'meta_train', 'eval') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout

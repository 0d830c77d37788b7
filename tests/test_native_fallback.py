"""The learned optimizers without the native CPU kernel: what a machine without a C++ compiler
(or with a broken one) gets. Never skipped: these are the machines that need the fallback."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from lopt.learned import dispatch, native, small_mlp


def no_compiler_env(tmp_path):
    """This process's environment with no compiler on PATH, no CXX and a fresh kernel cache."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "LOPT_NATIVE")}
    return env | {"PATH": str(empty), "LOPT_CACHE_DIR": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}


def test_unavailable_kernel_says_why_and_auto_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert "no-such-compiler" in native._load.__wrapped__()
    monkeypatch.setenv("LOPT_NATIVE", "0")
    assert native._load.__wrapped__() == "turned off by LOPT_NATIVE=0"
    monkeypatch.setattr(native, "_load", lambda: "turned off by LOPT_NATIVE=0")
    assert dispatch.network_kernel("auto", (32, 32), False, "cpu", native.available) == "xla"
    monkeypatch.delenv("LOPT_NATIVE")
    monkeypatch.setattr(native, "_load", lambda: "no C++ compiler found (set CXX)")
    with pytest.warns(RuntimeWarning, match="unavailable \\(no C\\+\\+ compiler found"):
        assert dispatch.network_kernel("auto", (32, 32), False, "cpu", native.available) == "xla"
        assert small_mlp().kernel_for_backend("cpu") == "xla"
    monkeypatch.setenv("LOPT_NATIVE", "0")
    monkeypatch.setattr(native, "_load", lambda: "turned off by LOPT_NATIVE=0")
    with pytest.raises(RuntimeError, match="unavailable: turned off"):
        native.mlp([jnp.ones(3)], [(jnp.ones((1, 4)), jnp.zeros(4)), (jnp.ones((4, 2)), jnp.zeros(2))])


def test_failed_build_leaves_no_library(monkeypatch, tmp_path):
    script = tmp_path / "broken-cxx"
    script.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && echo broken 1.0 && exit 0\necho 'error: broken' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("LOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(script))
    assert "broken-cxx failed on native_mlp.cc: error: broken" in native._load.__wrapped__()
    assert not list((tmp_path / "cache" / "native").iterdir())


NO_COMPILER = """
import warnings, jax, jax.numpy as jnp, numpy as np
from lopt.learned import native, small_mlp
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    meta = small_mlp()
    assert meta.kernel_for_backend("cpu") == "xla", meta.kernel_for_backend("cpu")
print("reason:", native.unavailable_reason())
print("warned:", any("no C++ compiler found" in str(w.message) for w in caught))
opt = meta.transform(meta.init_meta(jax.random.key(0)), num_steps=10)
params = {"w": jnp.ones((64, 32)), "b": jnp.zeros((32,))}
state = opt.init(params)
updates, state = jax.jit(opt.update)(jax.tree.map(jnp.cos, params), state, params, loss=jnp.float32(1.0))
print("finite:", all(bool(np.isfinite(np.asarray(u)).all()) for u in jax.tree.leaves(updates)))
"""


def test_a_machine_without_a_compiler_trains_on_the_xla_path(tmp_path):
    """A fresh process whose PATH holds no compiler and no CXX: the kernel says why it is off,
    once, and the wide MLP optimizer (which would use the kernel) runs on XLA's path."""
    env = no_compiler_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", NO_COMPILER], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reason: no C++ compiler found (set CXX)" in done.stdout
    assert "warned: True" in done.stdout and "finite: True" in done.stdout


def test_native_command_reports_the_kernels_state(tmp_path):
    """`lopt native` builds now and says how it went: exit 1 with the reason on a machine
    without a compiler, the cache folder and AMX state either way."""
    env = no_compiler_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "lopt.cli", "native"], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "native CPU kernel: unavailable: no C++ compiler found (set CXX)" in done.stdout
    assert f"cache: {tmp_path / 'cache' / 'native'}" in done.stdout
    assert "compiler: none found" in done.stdout

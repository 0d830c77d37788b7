"""The per-parameter MLP as a CPU kernel: `native_mlp.cc`, built on first use with the system's
C++ compiler and called through XLA's FFI.

Why: on CPUs XLA evaluates the shared network as separate matrix products, bias additions and
ReLUs over [H, N] intermediates (`per_param_mlp.reference`), and with a different network per
PES arm the products are small batched ones. The kernel instead takes 16 parameters at a time
through every layer with the hidden activations in registers, at under half XLA's time on W2's
network (docs/benchmarks.md); its whole-tile loads and stores are single vector instructions.

On CPUs with AMX (Intel Sapphire Rapids and later) hidden layers of 16-32 inputs, at most 32
outputs and at least 512 weights run as bfloat16 tile products, six per float32 product over an
exact three-part split of each operand (XLA's BF16_BF16_F32_X6 scheme: float32-accurate, see
`native_mlp.cc`), about a quarter faster than FMAs on W2's network (docs/benchmarks.md).
`amx()` says whether they are on;
`LOPT_NATIVE_AMX=0` or `jax.default_matmul_precision("F32_F32_F32")` keeps FMAs.

The kernel computes the forward pass only. Derivatives come from `per_param_mlp.reference`
through a custom JVP, so `jax.grad` and `jax.jvp` work and give the reference's numbers (a
gradient then pays for the reference's forward pass as well as the kernel's).

Build: `$CXX` (else c++, g++ or clang++) with -O3 -march=native into
`$LOPT_CACHE_DIR/native` (default ~/.cache/lopt/native), one library per source, flags,
compiler, jax version and CPU. Without a compiler, or if the build fails, `available()` is
False, `unavailable_reason()` says why, and the learned optimizers keep XLA's path.
`LOPT_NATIVE=0` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lopt import cache_files
from lopt.learned import features as F
from lopt.learned import per_param_mlp

SOURCE = Path(__file__).with_name("native_mlp.cc")
TURNED_OFF = "turned off by LOPT_NATIVE=0"
TARGETS = {"lopt_mlp_forward": "LoptMlpForward", "lopt_mlp_features_forward": "LoptMlpFeaturesForward"}


def _flags() -> list[str]:
    flags = ["-O3", "-march=native", "-fno-math-errno", "-std=gnu++17", "-shared", "-fPIC", "-w"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")  # one 16-lane tile per zmm register
    return flags


def compiler() -> str | None:
    """The C++ compiler the build uses: $CXX, else the first of c++, g++, clang++ on PATH."""
    named = os.environ.get("CXX")
    if named:
        return shutil.which(named) or named
    return next((path for name in ("c++", "g++", "clang++") if (path := shutil.which(name))), None)


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU's feature flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    root = os.environ.get("LOPT_CACHE_DIR") or Path.home() / ".cache" / "lopt"
    return Path(root) / "native"


def _build(compiler: str) -> Path:
    """The compiled library, built into the cache unless an identical build is there."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), " ".join(_flags()), version, jax.__version__, _cpu_signature()]).encode()
    ).hexdigest()[:20]
    folder = cache_dir()
    library = folder / f"lopt_mlp_{key}.so"
    try:
        cache_files.private_folder(folder)
    except cache_files.UntrustedCache as error:
        raise RuntimeError(f"{error} (set LOPT_CACHE_DIR)") from None
    if cache_files.read_verified(library) is not None:
        return library
    print(
        f"lopt: building the native CPU kernel into {folder} (once per compiler, flags and jax version)",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as scratch:
        partial = Path(scratch) / library.name
        command = [compiler, *_flags(), f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            first_error = next((line.strip() for line in lines if "error" in line.lower()), lines[-1].strip())
            raise RuntimeError(f"{Path(compiler).name} failed on {SOURCE.name}: {first_error}")
        cache_files.write_verified(library, partial.read_bytes())
    return library


@functools.cache
def _load() -> str:
    """Build and register the kernel once per process; '' on success, else why not."""
    if os.environ.get("LOPT_NATIVE", "1") == "0":
        return TURNED_OFF
    found = compiler()
    if found is None:
        return "no C++ compiler found (set CXX)"
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(found)))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
        global _amx_status
        _amx_status = _amx_enable(library)
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as error:
        return str(error)
    return ""


_amx_status = "off: the kernel is not loaded"


def _amx_enable(library: ctypes.CDLL) -> str:
    """Turns the tile path on unless LOPT_NATIVE_AMX=0, and says how it went (see `amx`)."""
    if os.environ.get("LOPT_NATIVE_AMX", "1") == "0":
        library.LoptAmxEnable(ctypes.c_int(0))
        return "off: turned off by LOPT_NATIVE_AMX=0"
    answer = library.LoptAmxEnable(ctypes.c_int(1))  # 1 on, 0 no AMX, -errno refused
    if answer == 1:
        return "on"
    if answer == 0:
        return "off: this CPU or compiler has no AMX-BF16"
    return f"off: Linux refused the tile registers ({os.strerror(-answer)})"


def amx() -> str:
    """Whether the kernel's hidden layers of 16-32 inputs, at most 32 outputs and at least 512
    weights run as AMX bfloat16 tile products (six over an exact three-part split,
    float32-accurate; see native_mlp.cc): 'on', or 'off: <why>'."""
    if not available():
        return f"off: {unavailable_reason()}"
    return _amx_status


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"lopt: the native CPU kernel is unavailable ({reason}); the learned optimizers use XLA's "
        "slower path (LOPT_NATIVE=0 silences this)",
        RuntimeWarning,
        stacklevel=3,
    )


def available() -> bool:
    """Whether the kernel is built and registered (building it on the first call). Says once,
    as a warning, why not, unless LOPT_NATIVE=0 turned it off."""
    reason = _load()
    if reason and reason != TURNED_OFF:
        _warn_once(reason)
    return not reason


def unavailable_reason() -> str:
    """Why `available()` is False ('' when it is True)."""
    return _load()


# jax_default_matmul_precision settings that name float32 (or float64) FMAs as the algorithm; under
# any other (JAX's default among them) the AMX path runs, which is float32-accurate too (six
# bfloat16 products, like BF16_BF16_F32_X6; see native_mlp.cc).
FMA_PRECISIONS = ("F32_F32_F32", "F64_F64_F64")


def fmas_only() -> bool:
    """Whether calls traced now run every layer as float32 FMAs: when AMX is off, or
    `jax.default_matmul_precision("F32_F32_F32")` asks for that algorithm."""
    return amx() != "on" or jax.config.jax_default_matmul_precision in FMA_PRECISIONS


Tensors = tuple[tuple[jax.Array, ...], ...]  # [tensor][input] -> flat [n_t] arrays


def _call(
    target: str, inputs: Tensors, layers: tuple[per_param_mlp.Layer, ...], **attributes: int
) -> list[tuple[jax.Array, jax.Array]]:
    results = []
    for arrays in inputs:
        shape = jax.ShapeDtypeStruct(arrays[0].shape, jnp.float32)
        results += [shape, shape]
    call = jax.ffi.ffi_call(target, tuple(results), vmap_method="broadcast_all")
    flat = call(
        *[a for arrays in inputs for a in arrays],
        *[a for layer in layers for a in layer],
        num_tensors=np.int64(len(inputs)),
        num_inputs=np.int64(len(inputs[0])),
        fmas_only=np.int64(fmas_only()),
        **{k: np.int64(v) for k, v in attributes.items()},
    )
    return [(flat[2 * t], flat[2 * t + 1]) for t in range(len(inputs))]


def _reference_network(inputs: Tensors, layers) -> list[tuple[jax.Array, jax.Array]]:
    return [per_param_mlp.reference(list(features), layers) for features in inputs]


def _reference_features_network(inputs: Tensors, layers, num_momenta: int) -> list[tuple[jax.Array, jax.Array]]:
    outputs = []
    for g, p, *state in inputs:
        acc = F.ParamAccumulators(tuple(state[:num_momenta]), tuple(state[num_momenta:]), ())
        outputs.append(per_param_mlp.reference(F.normalised_features(g, p, acc, kernel=False), layers))
    return outputs


@jax.custom_jvp
def _network(inputs: Tensors, layers: tuple[per_param_mlp.Layer, ...]) -> list[tuple[jax.Array, jax.Array]]:
    return _call("lopt_mlp_forward", inputs, layers)


@_network.defjvp
def _network_jvp(primals, tangents):
    _, tangent_out = jax.jvp(_reference_network, primals, tangents)
    return _network(*primals), tangent_out


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _features_network(
    inputs: Tensors, layers: tuple[per_param_mlp.Layer, ...], num_momenta: int
) -> list[tuple[jax.Array, jax.Array]]:
    return _call("lopt_mlp_features_forward", inputs, layers, num_momenta=num_momenta)


@_features_network.defjvp
def _features_network_jvp(num_momenta, primals, tangents):
    reference = lambda inputs, layers: _reference_features_network(inputs, layers, num_momenta)
    _, tangent_out = jax.jvp(reference, primals, tangents)
    return _features_network(*primals, num_momenta), tangent_out


def _check(
    inputs: Sequence[Sequence[jax.Array]], layers: Sequence[per_param_mlp.Layer], what: str
) -> tuple[Tensors, tuple[per_param_mlp.Layer, ...]]:
    if not available():
        raise RuntimeError(f"lopt's native CPU kernel is unavailable: {unavailable_reason()}")
    if not inputs or len({len(arrays) for arrays in inputs}) != 1 or not inputs[0]:
        raise ValueError(f"native.{what} needs the same nonzero number of inputs for every tensor")
    flat = tuple(tuple(jnp.asarray(a, jnp.float32).reshape(-1) for a in arrays) for arrays in inputs)
    for t, arrays in enumerate(flat):
        if len({a.size for a in arrays}) != 1:
            raise ValueError(f"native.{what}: the inputs of tensor {t} differ in size")
    return flat, tuple((jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in layers)


def mlp_tensors(
    inputs: Sequence[Sequence[jax.Array]], layers: Sequence[per_param_mlp.Layer]
) -> list[tuple[jax.Array, jax.Array]]:
    """`per_param_mlp.reference`'s network on several tensors' features in one call of the CPU
    kernel: inputs[t][f] is feature f of tensor t (any shape, read flat); returns (direction,
    magnitude) per tensor, flat [n_t]. Needs `available()`."""
    flat, cast = _check(inputs, layers, "mlp_tensors")
    if cast[0][0].shape[0] != len(flat[0]):
        raise ValueError(f"the network's first layer expects {cast[0][0].shape[0]} features, got {len(flat[0])}")
    return _network(flat, cast)


def mlp(features: Sequence[jax.Array], layers: Sequence[per_param_mlp.Layer]) -> tuple[jax.Array, jax.Array]:
    """`per_param_mlp.reference`'s network on one tensor's flat [N] features through the CPU
    kernel: (direction, magnitude), each [N]."""
    return mlp_tensors([features], layers)[0]


def features_mlp(
    tensors: Sequence[tuple[jax.Array, jax.Array, F.ParamAccumulators]], layers: Sequence[per_param_mlp.Layer]
) -> list[tuple[jax.Array, jax.Array]]:
    """`features.normalised_features` and the network in one call of the CPU kernel, for each
    (g, p, updated accumulators) in `tensors` (accumulators without factored moments, the same
    decays for every tensor); returns (direction, magnitude) per tensor, flat. The features never
    reach memory: the kernel computes them in each of its two passes over a tensor."""
    accumulators = [acc for _, _, acc in tensors]
    if any(acc.factored for acc in accumulators):
        raise ValueError("native.features_mlp takes accumulators without factored moments")
    num_momenta = len(accumulators[0].momentum)
    if len({(len(acc.momentum), len(acc.rms)) for acc in accumulators}) != 1 or num_momenta == 0:
        raise ValueError("native.features_mlp needs one momentum or more and the same accumulators for every tensor")
    flat, cast = _check([(g, p, *acc.momentum, *acc.rms) for g, p, acc in tensors], layers, "features_mlp")
    num_rms = len(accumulators[0].rms)
    num_features = 3 + num_momenta + num_rms + (num_momenta + 1 if num_rms else 0)
    if cast[0][0].shape[0] != num_features:
        raise ValueError(
            f"the network's first layer expects {cast[0][0].shape[0]} features, these accumulators give {num_features}"
        )
    return _features_network(flat, cast, num_momenta)

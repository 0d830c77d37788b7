"""The program library's matrix functions (lopt.matrix): each against a float64 numpy
transcription, the two interpreters against each other, the Muon / NorMuon / AdaMuon seeds step by
step against optax.contrib.muon and lopt's own NorMuon and AdaMuon, their motifs, their hashes,
the search's function spaces, and lopt.torch in torch's weight layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_generalist import numpy_newton_schulz  # Muon's iteration in float64 numpy

from lopt.baselines.orthogonal import scale_by_adamuon, scale_by_normuon
from lopt.meta_train.search import mutation
from lopt.meta_train.search.config import FitnessSpec, SearchConfig
from lopt.meta_train.search.fitness import BatchedEvaluator
from lopt.config import ConfigError, from_dict
from lopt.programs.analysis import check
from lopt.programs.batched import MATRIX_ROUND, ROUND, encode, encode_population, run_encoded
from lopt.programs.functional import functional_hashes
from lopt.programs.interpret import to_optax
from lopt.programs.lang import parse
from lopt.programs.library import MATRIX_NAMES, SPACES, apply_matrix
from lopt.programs.motifs import motifs
from lopt.programs.seeds import seed

SHAPES = [(3, 5), (5, 3), (2, 2, 3, 4), (7,), ()]


def _view(x: np.ndarray) -> np.ndarray:
    """[fan_in, fan_out] by hand: every axis but the last is fan-in; a vector is one row."""
    return x.reshape(1, -1) if x.ndim < 2 else x.reshape(-1, x.shape[-1])


def _numpy(name: str, x: np.ndarray) -> np.ndarray:
    m = _view(x.astype(np.float64))
    rows = np.mean(m * m, axis=1, keepdims=True)
    cols = np.mean(m * m, axis=0, keepdims=True)
    out = {
        "orthogonalize": lambda: numpy_newton_schulz(m),
        "row_ms": lambda: np.broadcast_to(rows, m.shape),
        "col_ms": lambda: np.broadcast_to(cols, m.shape),
        "row_normalize": lambda: m / (np.sqrt(rows) + 1e-8),
        "col_normalize": lambda: m / (np.sqrt(cols) + 1e-8),
        "width_scale": lambda: m * np.sqrt(max(1.0, m.shape[1] / m.shape[0])),
    }[name]()
    return out.reshape(x.shape)


@pytest.mark.parametrize("name", MATRIX_NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_each_matrix_function_matches_numpy(name, shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = np.asarray(apply_matrix(name, jnp.asarray(x)))
    assert got.shape == shape
    np.testing.assert_allclose(got, _numpy(name, x), rtol=2e-4, atol=2e-5)


def test_orthogonalize_flattens_the_spectrum_and_a_row_becomes_its_direction():
    x = np.random.default_rng(1).normal(size=(16, 40)).astype(np.float32) * np.geomspace(1e-2, 1e2, 40)
    singular = np.linalg.svd(np.asarray(apply_matrix("orthogonalize", jnp.asarray(x))), compute_uv=False)
    assert singular.min() > 0.5 and singular.max() < 1.3, singular
    v = np.array([3.0, -4.0], np.float32)
    out = np.asarray(apply_matrix("orthogonalize", jnp.asarray(v)))
    np.testing.assert_allclose(out / np.linalg.norm(out), v / 5.0, rtol=1e-5)


PARAMS = {
    "dense": jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)), jnp.float32),
    "wide": jnp.asarray(np.random.default_rng(3).normal(size=(3, 8)), jnp.float32),
    "conv": jnp.asarray(np.random.default_rng(4).normal(size=(2, 2, 3, 5)), jnp.float32),
    "bias": jnp.asarray(np.random.default_rng(5).normal(size=(5,)), jnp.float32),
    "scale": jnp.asarray(0.7, jnp.float32),
}
MATRICES = {k: PARAMS[k] for k in ("dense", "wide")}


def _grads(params, steps: int):
    keys = jax.random.split(jax.random.key(7), steps)
    return [
        jax.tree.map(lambda p, k=k: jax.random.normal(jax.random.fold_in(k, p.size), p.shape), params) for k in keys
    ]


def _trajectory(opt, params, steps: int = 12):
    state = opt.init(params)
    out = []
    for g in _grads(params, steps):
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


def _assert_same(ours, theirs, rtol=2e-5):
    for a, b in zip(ours, theirs):
        for key in a:
            np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=rtol, atol=1e-6, err_msg=key)


def test_muon_seed_equals_optax_muon_on_matrices():
    """optax.contrib.muon (its defaults: β 0.95, Nesterov, Newton–Schulz, width scaling) on 2-D
    weights, the program's matrix view being the same matrix."""
    _assert_same(_trajectory(to_optax(seed("muon"), 0.02), MATRICES), _trajectory(optax.contrib.muon(0.02), MATRICES))


@pytest.mark.parametrize("name, reference", [("normuon", scale_by_normuon()), ("adamuon", scale_by_adamuon())])
def test_normuon_and_adamuon_seeds_equal_the_zoo(name, reference):
    """The zoo's NorMuon and AdaMuon directions (written from the papers with numpy-checked parts,
    tests/test_orthogonal.py) times −lr, on dense and conv kernels."""
    params = {k: PARAMS[k] for k in ("dense", "wide", "conv")}
    expected = _trajectory(optax.chain(reference, optax.scale(-0.01)), params)
    _assert_same(_trajectory(to_optax(seed(name), 0.01), params), expected)


@pytest.mark.parametrize("name", ["muon", "normuon", "adamuon"])
def test_batched_interpreter_equals_tree_interpreter_on_matrix_programs(name):
    """Every rank (conv, matrices, a vector, a scalar) through the flat interpreter with the
    tensors' shapes, against to_optax, 6 steps."""
    graph = check(seed(name))
    leaves = jax.tree.leaves(PARAMS)
    shapes = tuple(leaf.shape for leaf in leaves)
    flat = lambda tree: jnp.concatenate([jnp.reshape(x, -1) for x in jax.tree.leaves(tree)])  # noqa: E731
    encoded = jax.tree.map(jnp.asarray, encode(graph))
    assert encoded.layout.shape == (len(MATRIX_ROUND),)
    size = sum(leaf.size for leaf in leaves)
    w, m, v = flat(PARAMS), jnp.zeros(size), jnp.zeros(size)
    step = jax.jit(run_encoded, static_argnums=(7,))
    opt = to_optax(seed(name), 0.01)
    state, params = opt.init(PARAMS), PARAMS
    for t, grads in enumerate(_grads(PARAMS, 6), start=1):
        expected, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, expected)
        update, m, v = step(encoded, w, flat(grads), m, v, 0.01, float(t), shapes)
        np.testing.assert_allclose(-np.asarray(update), np.asarray(flat(expected)), rtol=2e-5, atol=1e-7)
        w = w - update


def test_a_population_without_matrix_functions_keeps_the_short_round():
    plain = check(seed("adamw"))
    assert encode_population([plain], 2).layout.shape[-1] == len(ROUND)
    mixed = encode_population([plain, check(seed("muon"))], 2)
    assert mixed.layout.shape[-1] == len(MATRIX_ROUND)


def test_motifs_name_orthogonalised_momentum_and_factored_second_moment():
    assert "orthogonalised momentum" in motifs(check(seed("muon")))
    assert "factored second moment" not in motifs(check(seed("muon")))
    assert {"orthogonalised momentum", "factored second moment"} <= set(motifs(check(seed("normuon"))))
    orthogonal_gradient = (
        "def train(w, g, m, v, lr):\n  o = orthogonalize(g)\n  update = o * lr\n  return update, m, v\n"
    )
    assert "orthogonalised momentum" not in motifs(check(parse(orthogonal_gradient)))
    unwritten = orthogonal_gradient.replace("orthogonalize(g)", "orthogonalize(x)").replace(
        "  o =", "  x = g + m\n  o ="
    )
    assert "orthogonalised momentum" not in motifs(check(parse(unwritten)))


def _program(body: str):
    return check(parse(f"def train(w, g, m, v, lr):\n{body}  update = x * lr\n  return update, m, v\n"))


def test_functional_hash_tells_rows_from_columns_and_sees_through_rewrites():
    rows, cols = _program("  x = row_ms(g)\n"), _program("  x = col_ms(g)\n")
    normalized = _program("  x = row_normalize(g)\n")
    by_hand = _program("  r = row_ms(g)\n  r = sqrt(r)\n  d = r + 1e-08\n  x = g / d\n")
    hashes = [h for h, _ in functional_hashes([rows, cols, normalized, by_hand])]
    assert hashes[0] != hashes[1]
    assert hashes[2] == hashes[3]


def test_the_search_space_decides_whether_mutations_use_matrix_functions():
    rng = np.random.default_rng(0)
    drawn = {mutation._random_statement(rng, seed("adamw"), 3, "matrix").op for _ in range(400)}
    assert drawn & set(MATRIX_NAMES)
    drawn = {mutation._random_statement(rng, seed("adamw"), 3, "lion").op for _ in range(400)}
    assert not drawn & set(MATRIX_NAMES)
    assert set(SPACES["matrix"]) - set(SPACES["lion"]) == set(MATRIX_NAMES)


def test_search_config_rejects_an_unknown_space():
    with pytest.raises(ConfigError, match="search.space: unknown 'matrx'"):
        from_dict(SearchConfig, {"search": {"space": "matrx"}})


def test_the_kernel_evaluator_runs_matrix_programs_in_the_scan_beside_it():
    """Beside the Pallas kernel (interpreted on this CPU), programs with matrix functions run in
    batches of their own through the scan, and score as the scan-only evaluator scores them."""
    spec = FitnessSpec(
        tasks=("quadratic-10-cond100",), steps=12, seeds=1, lr_multipliers=(1.0,), eval_batches=1, length=16, batch=2
    )
    graphs = [check(seed("adamw_paper")), check(seed("muon")), check(seed("normuon"))]
    with_kernel = BatchedEvaluator(spec, kernel=True, lowered_dir=None).losses(graphs)
    np.testing.assert_allclose(with_kernel, BatchedEvaluator(spec, lowered_dir=None).losses(graphs), rtol=1e-4)


def test_torch_reads_its_own_weight_layout():
    """A program with every matrix function, in torch on torch-layout weights ([out, in],
    [out, in, kh, kw]), gives JAX's trajectory on the flax-layout weights, transposed."""
    torch = pytest.importorskip("torch")
    from lopt.programs import from_program
    from lopt.torch.program import TorchProgram

    body = "".join(f"  y{i} = {name}(m)\n  acc = acc + y{i}\n" for i, name in enumerate(MATRIX_NAMES))
    text = (
        "def train(w, g, m, v, lr):\n  m = interp(g, m, 0.9)\n  acc = g * 0.0\n"
        + body
        + "  x = acc * 0.1\n  update = lr * x\n  return update, m, v\n"
    )
    meta = from_program(text, learning_rate=1e-2)
    theta = meta.init_meta(jax.random.key(0))
    flax = {"dense": PARAMS["dense"], "conv": PARAMS["conv"], "bias": PARAMS["bias"]}
    to_torch = {"dense": lambda x: x.T, "conv": lambda x: np.transpose(x, (3, 2, 0, 1)), "bias": lambda x: x}
    expected = _trajectory(meta.transform(theta, num_steps=12), flax, steps=12)
    tensors = {k: torch.nn.Parameter(torch.tensor(np.array(to_torch[k](np.asarray(v))))) for k, v in flax.items()}
    opt = TorchProgram(list(tensors.values()), meta, theta, num_steps=12)
    for step, grads in enumerate(_grads(flax, 12)):
        for k, p in tensors.items():
            p.grad = torch.tensor(np.array(to_torch[k](np.asarray(grads[k]))))
        opt.step()
        for k, p in tensors.items():
            np.testing.assert_allclose(
                p.detach().numpy(), to_torch[k](np.asarray(expected[step][k])), rtol=1e-5, atol=1e-6, err_msg=k
            )

"""lopt.torch: the trained optimizers as torch.optim.Optimizers, step for step equal to the JAX
rule (lopt.load) on a multi-tensor model, with torch's conventions and one-line errors."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

import lopt  # noqa: E402
import lopt.torch  # noqa: E402
from lopt.programs import from_program  # noqa: E402
from lopt.learned import LRController, MLPOptimizer, factored_mlp, generalist, small_mlp, velo_small  # noqa: E402
from lopt.learned.features import AccumulatorConfig  # noqa: E402

LION = """def train(w, g, m, v, lr):
  x1 = interp(g, m, 0.9)
  x2 = sign(x1)
  x3 = w * 0.01
  x4 = x2 + x3
  update = lr * x4
  m = interp(g, m, 0.99)
  return update, m, v
"""
PRELUDE = """def train(w, g, m, v, lr):
  m = interp(g, m, 0.9)
  x2 = square(g)
  v = interp(x2, v, 0.999)
  s = g * 0.1
  h = tanh(g)
  hh = h * 0.5
  q = abs(g)
  q1 = q + 1.5
  n = negative(q)
  acc = g * 0.0
"""
# every library function once, each on inputs inside its domain
TERMS = [
    ("abs", "g"), ("cos", "g"), ("sin", "g"), ("tan", "s"), ("arcsin", "hh"), ("arccos", "hh"), ("arctan", "g"),
    ("sinh", "s"), ("cosh", "s"), ("tanh", "g"), ("arcsinh", "g"), ("arccosh", "q1"), ("arctanh", "hh"),
    ("exp", "n"), ("exp2", "n"), ("exp10", "n"), ("expm1", "s"), ("log", "q1"), ("log10", "q1"), ("log2", "q1"),
    ("log1p", "q"), ("square", "s"), ("sqrt", "v"), ("cube", "s"), ("cbrt", "g"), ("sign", "g"),
    ("reciprocal", "q1"), ("negative", "m"), ("max", "g, m"), ("min", "g, m"), ("power", "q1, 0.5"),
    ("clip", "g, 0.5"), ("norm", "g"), ("global_norm", "v"), ("dot", "g, m"), ("cosine_sim", "g, m"),
    ("clip_by_global_norm", "m, 1.0"), ("", "g / q1"), ("", "g - m"),
]  # fmt: skip


def _library_program(terms) -> str:
    lines = [f"  y{i} = {f'{fn}({args})' if fn else args}\n  acc = acc + y{i}\n" for i, (fn, args) in enumerate(terms)]
    return PRELUDE + "".join(lines) + "  x = acc * 0.01\n  update = lr * x\n  return update, m, v\n"


# a conv kernel, a matrix, a bias, a norm scale and an embedding table
SHAPES = {"conv": (4, 3, 3, 3), "matrix": (12, 7), "bias": (7,), "scale": (7,), "embed": (20, 6)}
STEPS = 50


def _start(seed: int = 0):
    rng = np.random.default_rng(seed)
    # small weights, so that 50 steps of ~1e-3 move them by a visible fraction: a wrong term in
    # an update then shows in the relative difference of θ itself
    params = {k: 0.1 * rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    params["scale"] = np.abs(params["scale"]) + 0.05
    noise = [{k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return params, noise


def _gradient(noise, params):
    """A gradient that depends on the parameters (so the two trajectories stay coupled)."""
    out = {}
    for k, p in params.items():
        n = torch.from_numpy(noise[k]) if isinstance(p, torch.Tensor) else noise[k]
        out[k] = n + 0.5 * p**3 / (1 + p**2)
    return out


def _checkpoint(tmp_path, meta, name):
    theta = meta.init_meta(jax.random.key(0))
    leaves, tree = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    theta = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return lopt.save(tmp_path / name, meta, theta, num_steps=STEPS)


def _trajectories(path):
    """Parameters after every step, from JAX (lopt.load) and from torch (lopt.torch.load)."""
    start, noise = _start()
    opt = lopt.load(path, num_steps=STEPS)
    params = {k: jnp.asarray(v) for k, v in start.items()}
    state = opt.init(params)
    update = jax.jit(opt.update)
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in start.items()}
    topt = lopt.torch.load(path, list(tparams.items()), num_steps=STEPS)  # named: the generalist reads names
    out = []
    for t in range(STEPS):
        loss = float(1.0 / (t + 1))
        grads = _gradient(noise[t], params)
        updates, state = update(grads, state, params, loss=jnp.float32(loss))
        params = optax.apply_updates(params, updates)
        tgrads = _gradient(noise[t], {k: p.detach() for k, p in tparams.items()})
        for k, p in tparams.items():
            p.grad = tgrads[k]
        topt.step(loss=torch.tensor(loss))
        out.append(
            ({k: np.asarray(v) for k, v in params.items()}, {k: p.detach().numpy().copy() for k, p in tparams.items()})
        )
    return out


def _worst(trajectory):
    """The largest per-tensor relative difference, ‖θ_jax − θ_torch‖∞ / ‖θ_jax‖∞, over steps and
    tensors (elementwise ratios at entries that cross zero measure float rounding, not the rule)."""
    return max(float(np.max(np.abs(j[k] - t[k])) / np.max(np.abs(j[k]))) for j, t in trajectory for k in SHAPES)


@pytest.mark.parametrize(
    "name,meta",
    [
        ("small", small_mlp()),
        ("factored", factored_mlp()),
        ("loss-features", MLPOptimizer(hidden_sizes=(8,), use_loss_features=True)),
        ("controller-adam", LRController(hidden_sizes=(8, 8))),
        ("controller-hd", LRController(base="adam_hd_log_adam", hidden_sizes=(8,))),
        ("generalist", generalist()),
        ("program-lion", from_program(LION, learning_rate=3e-3)),
        *[(f"program-library-{i}", from_program(_library_program(TERMS[i::4]), learning_rate=1e-2)) for i in range(4)],
        ("generalist-nominal-knots", generalist(init="random", nominal=True, schedule_knots=4, weight_decay=0.1)),
        (
            "all-accumulators",
            MLPOptimizer(hidden_sizes=(8, 8), accumulators=AccumulatorConfig(factored_decays=(0.9, 0.99))),
        ),
    ],
)
def test_torch_matches_jax_at_every_step(tmp_path, name, meta):
    path = _checkpoint(tmp_path, meta, name)
    assert _worst(_trajectories(path)) < 1e-5


def test_controller_with_an_unported_base_is_one_line(tmp_path):
    path = _checkpoint(tmp_path, LRController(base="lion", hidden_sizes=(4,)), "lion")
    with pytest.raises(lopt.torch.TorchOptimizerError, match="base 'lion' have no torch version"):
        lopt.torch.load(path, [torch.nn.Parameter(torch.ones(2))], num_steps=5)


@pytest.mark.parametrize(
    "name", [n for n in lopt.shipped() if lopt.read_manifest(f"checkpoints/{n}")["kind"] in lopt.torch.TORCH_KINDS]
)
def test_shipped_optimizers_match_in_torch(name):
    assert _worst(_trajectories(name)) < 1e-5


def test_a_dropped_term_is_caught(tmp_path, monkeypatch):
    """The equality test can fail: without the clipped-gradient feature the trajectories part."""
    from lopt.torch import features as T

    path = _checkpoint(tmp_path, small_mlp(), "small")
    original = T.raw_features
    monkeypatch.setattr(T, "raw_features", lambda g, p, acc: [original(g, p, acc)[0], g, *original(g, p, acc)[2:]])
    assert _worst(_trajectories(path)) > 1e-3


def _train(opt, params, noise, steps):
    for t in steps:
        grads = _gradient(noise[t], {k: p.detach() for k, p in params.items()})
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()


def test_state_dict_round_trip_is_bit_equal(tmp_path):
    path = _checkpoint(tmp_path, factored_mlp(), "factored")
    start, noise = _start()
    fresh = lambda: {k: torch.nn.Parameter(torch.tensor(v)) for k, v in start.items()}  # noqa: E731
    whole = fresh()
    opt = lopt.torch.load(path, list(whole.values()), num_steps=STEPS)
    _train(opt, whole, noise, range(40))
    first = fresh()
    opt = lopt.torch.load(path, list(first.values()), num_steps=STEPS)
    _train(opt, first, noise, range(20))
    saved = copy.deepcopy(opt.state_dict())
    resumed = {k: torch.nn.Parameter(p.detach().clone()) for k, p in first.items()}
    opt = lopt.torch.load(path, list(resumed.values()), num_steps=STEPS)
    opt.load_state_dict(saved)
    _train(opt, resumed, noise, range(20, 40))
    for k in SHAPES:
        assert torch.equal(whole[k], resumed[k]), k


def test_param_groups_closure_and_missing_gradients(tmp_path):
    path = _checkpoint(tmp_path, small_mlp(), "small")
    a, b = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(4))
    opt = lopt.torch.load(path, [{"params": [a]}, {"params": [b]}], num_steps=10)

    def closure():
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 6.0
    assert not torch.equal(a, torch.ones(3, 2)) and torch.equal(b, torch.ones(4))  # b had no gradient
    assert [g["count"] for g in opt.param_groups] == [1, 1]


def test_bfloat16_parameters_keep_float32_state(tmp_path):
    path = _checkpoint(tmp_path, small_mlp(), "small")
    p = torch.nn.Parameter(torch.ones(5, 3, dtype=torch.bfloat16))
    opt = lopt.torch.load(path, [p], num_steps=10)
    p.grad = torch.full((5, 3), 0.5, dtype=torch.bfloat16)
    opt.step()
    assert p.dtype == torch.bfloat16 and torch.isfinite(p.float()).all()
    assert all(m.dtype == torch.float32 for m in opt.state[p]["accumulators"]["momentum"])
    saved = copy.deepcopy(opt.state_dict())
    again = lopt.torch.load(path, [p], num_steps=10)
    again.load_state_dict(saved)
    assert all(m.dtype == torch.float32 for m in again.state[p]["accumulators"]["momentum"])


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(lopt.CheckpointError):
        lopt.torch.load(tmp_path / "missing", [torch.nn.Parameter(torch.ones(2))])
    unported = _checkpoint(tmp_path, velo_small(), "velo")  # VeLO has no torch version yet
    with pytest.raises(lopt.torch.TorchOptimizerError, match="kind 'velo' have no torch version yet"):
        lopt.torch.load(unported, [torch.nn.Parameter(torch.ones(2))], num_steps=10)
    path = _checkpoint(tmp_path, small_mlp(), "small")
    with pytest.raises(
        lopt.torch.TorchOptimizerError, match="float32 or bfloat16 parameters, got one of dtype torch.float64"
    ):
        lopt.torch.load(path, [torch.nn.Parameter(torch.ones(2, dtype=torch.float64))])
    embed = torch.nn.Embedding(10, 3, sparse=True)
    opt = lopt.torch.load(path, embed.parameters())
    embed(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(lopt.torch.TorchOptimizerError, match="sparse gradients are not supported"):
        opt.step()
    with pytest.raises(lopt.torch.TorchOptimizerError, match="num_steps must be a positive"):
        lopt.torch.load(path, [torch.nn.Parameter(torch.ones(2))], num_steps=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["small-mlp-pes-h100", "generalist"])
def test_torch_compile_makes_one_graph_for_every_shape(name):
    """torch.compile(opt.step): every parameter shape in one graph, recompiled once (when the step
    count turns into a dynamic integer), and the same parameters as eager steps (to rounding)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8), torch.nn.LayerNorm(8)
        )

    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    models = [net(), net()]
    opts = [lopt.torch.load(name, m.named_parameters(), num_steps=100) for m in models]
    steps = [opts[0].step, torch.compile(opts[1].step)]
    for _ in range(5):
        for model, opt, step in zip(models, opts, steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            step()
    assert counters["stats"]["unique_graphs"] <= 2
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        # inductor fuses and reorders float32 reductions (Newton-Schulz, feature norms): equal to
        # rounding, not bit for bit
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

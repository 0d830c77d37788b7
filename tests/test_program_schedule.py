"""Programs on a learning-rate schedule: the schedule's values by hand, a scheduled program as
the constant one with its rate scaled per step, both search evaluators under it, the shipped
checkpoint carrying it, and lopt.torch following it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.config import ConfigError, from_dict
from lopt.meta_train.search.config import FitnessSpec, SearchConfig
from lopt.meta_train.search.fitness import BatchedEvaluator, JitEvaluator
from lopt.programs import from_program
from lopt.programs.analysis import check
from lopt.programs.interpret import to_optax
from lopt.programs.optimizer import lr_schedule, save_program
from lopt.programs.seeds import SEEDS, seed

SGD = "def train(w, g, m, v, lr):\n  update = g * lr\n  return update, m, v\n"


def test_cosine_schedule_values_by_hand():
    """Linear warm-up over 5% of 200 steps (t/10 for t = count + 1 ≤ 10), then
    ½(1 + cos(π (t − 10)/190)) down to 0 at t = 200."""
    rate = lr_schedule(0.5, "cosine", 200)
    for count in (0, 4, 9, 10, 57, 150, 199):
        t = count + 1
        expected = t / 10 if t <= 10 else 0.5 * (1 + math.cos(math.pi * (t - 10) / 190))
        np.testing.assert_allclose(float(rate(count)), 0.5 * expected, rtol=1e-6, atol=1e-8)
    assert lr_schedule(0.5, "constant", 200) == 0.5
    with pytest.raises(ValueError, match="schedule: unknown 'cosin'"):
        lr_schedule(0.5, "cosin", 200)


def test_a_scheduled_program_is_the_constant_one_with_its_rate_scaled_each_step():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    opt = to_optax(seed("adamw"), lr_schedule(1e-2, "cosine", 40))
    state = opt.init(params)
    reference = to_optax(seed("adamw"), 1.0)
    ref_state = reference.init(params)
    for count in range(40):
        updates, state = opt.update(grads, state, params)
        unit, ref_state = reference.update(grads, ref_state, params)
        factor = float(lr_schedule(1e-2, "cosine", 40)(count))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, factor * b, rtol=1e-5, atol=1e-9), updates, unit)


def test_both_search_evaluators_agree_under_the_schedule_and_it_changes_the_score():
    base = {
        "tasks": ("quadratic-10-cond100",),
        "steps": 30,
        "seeds": 1,
        "lr_multipliers": (1.0, 3.0),
        "eval_batches": 1,
        "length": 16,
        "batch": 4,
    }
    graphs = [check(seed("adamw_paper")), check(seed("muon"))]
    cosine = FitnessSpec(**base, schedule="cosine")
    batched = BatchedEvaluator(cosine).losses(graphs)
    np.testing.assert_allclose(batched, JitEvaluator(cosine).losses(graphs), rtol=2e-3)
    constant = BatchedEvaluator(FitnessSpec(**base)).losses(graphs)
    assert not np.allclose(batched, constant, rtol=1e-3)


def test_config_errors_name_the_schedule():
    with pytest.raises(ConfigError, match="fitness.schedule: 'cosin' is not one of constant, cosine"):
        from_dict(SearchConfig, {"fitness": {"schedule": "cosin"}})


def test_a_saved_program_keeps_its_schedule_and_needs_the_run_length(tmp_path):
    path = save_program(tmp_path / "p", SEEDS["adamw"], 3e-3, {"source": "test"}, schedule="cosine")
    with pytest.raises(ValueError, match="num_steps"):
        lopt.load(path)
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 0.3)}
    loaded = lopt.load(path, num_steps=50)
    direct = to_optax(seed("adamw"), lr_schedule(3e-3, "cosine", 50))
    s1, s2 = loaded.init(params), direct.init(params)
    for _ in range(5):
        u1, s1 = loaded.update(grads, s1, params)
        u2, s2 = direct.update(grads, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="schedule: unknown"):
        from_program(SGD, 1.0, "warmup")


def test_torch_follows_the_programs_schedule():
    torch = pytest.importorskip("torch")
    from lopt.torch.program import TorchProgram

    meta = from_program(SGD, 0.1, "cosine")
    theta = meta.init_meta(jax.random.key(0))
    p = torch.nn.Parameter(torch.zeros(3))
    opt = TorchProgram([p], meta, theta, num_steps=20)
    jax_opt = meta.transform(theta, num_steps=20)
    params = {"p": jnp.zeros(3)}
    state = jax_opt.init(params)
    for _ in range(20):
        p.grad = torch.ones(3)
        opt.step()
        updates, state = jax_opt.update({"p": jnp.ones(3)}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(p.detach().numpy(), np.asarray(params["p"]), rtol=1e-6, atol=1e-8)

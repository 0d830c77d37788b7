"""Program search: mutations, evolution with caches, determinism and resume, funnel,
simplifier, and the `lopt search` / `lopt program` commands."""

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import lopt

from lopt.cli import main
from lopt.config import ConfigError, from_dict, load_config
from lopt.programs import check, format_program, parse, seed, structural_hash
from lopt.programs.analysis import to_graph
from lopt.programs.batched import rounds_needed
from lopt.programs.simplify import simplify
from lopt.meta_train.search import mutation
from lopt.meta_train.search.fitness import BatchedEvaluator, JitEvaluator, evaluator
from lopt.meta_train.search.scoring import padded_batch, score
from lopt.meta_train.search.config import FitnessSpec
from lopt.meta_train.search.config import SearchConfig
from lopt.meta_train.search.job import Search
from lopt.meta_train.search.pipeline import (
    FUNNEL_TEST_SEED,
    ship_checkpoint,
    curves,
    funnel,
    promoted_program,
    stage_scores,
    top,
    validated,
)

TINY_FITNESS = {
    "tasks": ["quadratic-10-cond100"],
    "steps": 30,
    "seeds": 1,
    "lr_multipliers": [1.0, 3.0],
    "eval_batches": 1,
    "length": 16,
    "batch": 4,
}


def tiny_config(tmp_path, **search):
    data = {
        "search": {"population": 6, "tournament": 2, "children": 4, "generations": 2, "max_statements": 16, **search},
        "fitness": TINY_FITNESS,
        "run": {"output_dir": str(tmp_path / "search")},
    }
    return from_dict(SearchConfig, data)


def test_mutations_give_valid_new_children():
    rng = np.random.default_rng(0)
    parent = seed("adamw_paper")
    kinds = set()
    for _ in range(60):
        child, description, graph, tries = mutation.mutate(parent, rng, "all", 16)
        assert structural_hash(child) != structural_hash(parent)
        assert check(parse(format_program(child)))  # valid through the text
        kinds.add(description.split()[0])
        parent = child
    assert kinds == {"insert", "delete", "modify"}


def test_constant_mutation_changes_only_constants():
    rng = np.random.default_rng(1)
    parent = seed("adamw_paper")
    for _ in range(10):
        child, description, _, _ = mutation.mutate(parent, rng, "constants", 16)
        assert description.startswith("constant")
        assert [(s.target, s.op) for s in child.statements] == [(s.target, s.op) for s in parent.statements]


# A child logged by a GPU search (2026-12-02) whose schedule needs 4 rounds of slots.
FOUR_ROUNDS = """def train(w, g, m, v, lr):
  g2 = square(g)
  m = interp(g, m, 0.9)
  v = interp(g2, v, 0.999)
  g = exp(g2)
  sqrt_v = sqrt(v)
  sqrt_v = arcsinh(g2)
  m = log1p(3.525022029876709)
  lr = cosh(lr)
  denominator = sqrt_v + 1e-08
  update = m / g
  wd = lr * 0.01
  update = update + wd
  lr = lr * 0.001
  update = update * lr
  return update, m, v
"""


def test_children_that_need_more_rounds_than_max_rounds_are_not_made(tmp_path):
    parent = parse(FOUR_ROUNDS)
    assert rounds_needed(check(parent)) == 4
    free = [rounds_needed(mutation.mutate(parent, np.random.default_rng(k))[2]) for k in range(30)]
    capped = [rounds_needed(mutation.mutate(parent, np.random.default_rng(k), max_rounds=3)[2]) for k in range(30)]
    assert max(free) == 4 and max(capped) <= 3
    text, _, _, _ = mutation.mutate_text(FOUR_ROUNDS, (0, 1, 2), "all", 24, 3)
    assert rounds_needed(check(parse(text))) <= 3
    rng = np.random.default_rng(3)
    assert all(rounds_needed(mutation.random_program(rng, 20, max_rounds=2)[1]) <= 2 for _ in range(10))
    for bad in (-1, 17, True, 2.5):
        with pytest.raises(ConfigError, match="search.max_rounds"):
            tiny_config(tmp_path, max_rounds=bad)


def test_children_nan_where_a_gradient_is_zero_are_rejected_only_when_asked(tmp_path):
    """search.reject_nan_at_zero: m / sqrt(v) (0/0 at a dead unit) is trained by default — the
    paper's seed is such a program — and rejected untrained with the flag; either way it no longer
    shares a cache entry with m / (sqrt(v) + eps)."""
    body = (
        "def train(w, g, m, v, lr):\n  g2 = square(g)\n  v = interp(g2, v, 0.999)\n  r = sqrt(v)\n{}\n"
        "  update = u * lr\n  return update, m, v\n"
    )
    with_eps, without = (check(parse(body.format(x))) for x in ("  d = r + 1e-08\n  u = g / d", "  u = g / r"))
    plain = Search(tiny_config(tmp_path / "a", seed_program="adamw_paper"), progress=False)
    scores, how = plain._score([with_eps, without])
    assert how == ["trained", "trained"] and np.all(np.isfinite(scores))
    strict = Search(
        tiny_config(tmp_path / "b", seed_program="adamw_paper_eps", reject_nan_at_zero=True), progress=False
    )
    scores, how = strict._score([with_eps, without])
    assert how == ["trained", "rejected"] and np.isfinite(scores[0]) and scores[1] == np.inf
    with pytest.raises(ConfigError, match="search.reject_nan_at_zero: the seed program 'adamw_paper'"):
        Search(tiny_config(tmp_path / "c", seed_program="adamw_paper", reject_nan_at_zero=True), progress=False)


def test_random_programs_are_valid():
    rng = np.random.default_rng(2)
    for _ in range(10):
        program, graph = mutation.random_program(rng, 8)
        assert check(program) == graph


def test_score_takes_the_best_lr_of_the_seed_median_and_rejects_non_finite():
    losses = np.array([[[[1.0, 2.0, 9.0], [0.5, 0.4, 0.6]]], [[[np.nan, 1.0, 1.0], [np.inf, 1.0, 1.0]]]])
    np.testing.assert_allclose(score(losses)[0], np.log(0.5))
    np.testing.assert_allclose(score(losses)[1], np.log(1.0))
    assert score(np.full((1, 1, 2, 3), np.nan))[0] == np.inf


def test_batched_and_per_program_jit_evaluators_agree():
    spec = FitnessSpec(**{**TINY_FITNESS, "tasks": ("quadratic-10-cond100",), "lr_multipliers": (1.0, 3.0)})
    graphs = [check(seed("adamw_paper")), check(seed("lion_raw"))]
    np.testing.assert_allclose(BatchedEvaluator(spec).losses(graphs), JitEvaluator(spec).losses(graphs), rtol=2e-3)


def test_the_kernel_evaluator_agrees_with_the_scan():
    """interpreter 'kernel': programs without tree-level statements run through the Pallas
    kernel (its interpreter on the CPU), the one with global clipping through the kernel's tree
    passes, in a batch of its own; the losses equal the scan interpreter's."""
    spec = FitnessSpec(**{**TINY_FITNESS, "tasks": ("quadratic-10-cond100",), "lr_multipliers": (1.0, 3.0)})
    clipped = check(
        parse(
            "def train(w, g, m, v, lr):\n  c = clip_by_global_norm(g, 1.0)\n  m = interp(c, m, 0.9)\n"
            "  update = m * 0.05\n  return update, m, v\n"
        )
    )
    graphs = [check(seed("adamw_paper")), clipped, check(seed("lion_raw"))]
    kernel = evaluator(dataclasses.replace(spec, interpreter="kernel"))
    np.testing.assert_allclose(kernel.losses(graphs), BatchedEvaluator(spec).losses(graphs), rtol=1e-4)
    assert sorted(key[2] for key in kernel._executables) == ["kernel", "kernel-tree"]


def test_the_hurdle_stops_programs_worse_than_the_seed_on_the_first_task():
    """fitness.hurdle: a program whose first-task score is worse than the seed's by more than the
    hurdle is never trained on the second task and scores +inf; the others score as without it."""
    spec = FitnessSpec(
        **{
            **TINY_FITNESS,
            "tasks": ("quadratic-10-cond100", "digits-mlp-relu32"),
            "steps": (30, 5),
            "lr_multipliers": (1.0,),
            "hurdle": 0.5,
        }
    )
    ascent = check(parse("def train(w, g, m, v, lr):\n  update = g * -0.01\n  return update, m, v\n"))
    graphs = [check(seed("adamw_paper")), ascent]
    plain = BatchedEvaluator(dataclasses.replace(spec, hurdle=0.0))
    gated = BatchedEvaluator(spec)
    seen = []
    original = gated._dispatch
    gated._dispatch = lambda g, t: seen.append((len(g), t)) or original(g, t)
    gated.hurdle.set_reference(check(seed("adamw_paper")))
    expected, got = plain(graphs), gated(graphs)
    assert seen[-2:] == [(2, 0), (1, 1)]  # both on the first task, only AdamW on the second
    assert got[0] == expected[0] and expected[1] > expected[0] + 0.5 and got[1] == np.inf
    assert gated.hurdle.rejected == 1 and list(gated.hurdle.last_kept) == [True, False]
    with pytest.raises(ConfigError, match="fitness.hurdle"):
        FitnessSpec(hurdle=-1.0)
    with pytest.raises(ConfigError, match="fitness.precompile"):
        FitnessSpec(precompile=(0,))


def test_a_search_with_a_hurdle_counts_the_programs_it_stopped(tmp_path):
    data = {
        "search": {"population": 6, "tournament": 2, "children": 6, "generations": 4, "max_statements": 16},
        "fitness": {**TINY_FITNESS, "tasks": ["quadratic-10-cond100", "quadratic-10-cond100"], "hurdle": 1e-3},
        "run": {"output_dir": str(tmp_path / "search")},
    }
    search = Search(from_dict(SearchConfig, data), progress=False)
    search.run()
    stats = search.statistics()
    entries = [json.loads(line) for line in (tmp_path / "search" / "log.jsonl").read_text().splitlines()]
    logged = [e["scored"] for e in entries if e["mutation"] != "seed"]
    assert stats["hurdle_stops"] == logged.count("hurdle") and stats["trained"] == logged.count("trained")
    assert stats["hurdle_stops"] > 0


def test_partial_batches_pad_to_the_next_power_of_two_down_to_a_quarter():
    assert [padded_batch(n, 128) for n in (1, 32, 33, 64, 65, 128)] == [32, 32, 64, 64, 128, 128]
    assert [padded_batch(n, 4) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]


def test_fitness_rejects_runs_that_blow_the_weights_up():
    """An evolved exploit: shift every weight by ~1e14 so a float32 cross-entropy reads 0."""
    exploit = check(
        parse("def train(w, g, m, v, lr):\n  a = g / g\n  b = a + 5e15\n  update = b * 0.04\n  return update, m, v\n")
    )
    spec = FitnessSpec(tasks=("digits-mlp-relu32",), steps=5, seeds=1, lr_multipliers=(1.0,), eval_batches=1)
    assert JitEvaluator(spec)([exploit])[0] == np.inf
    assert BatchedEvaluator(dataclasses.replace(spec, batch=1))([exploit])[0] == np.inf


@pytest.mark.parametrize("overlap", [False, True])
def test_search_is_deterministic_and_resumes_exactly(tmp_path, overlap):
    """Also with `search.overlap`, where state.json holds the next generation's children, already
    launched when the search is killed, and a resume launches them again."""
    # 16 children of a population of 16 seeds: 3 children of generation 2 equal ones of generation 1
    config = lambda d: tiny_config(d, overlap=overlap, generations=3, children=16, population=16)  # noqa: E731
    straight = Search(config(tmp_path / "a"), progress=False)
    straight.run()
    interrupted = Search(config(tmp_path / "b"), progress=False)
    interrupted.step()  # then "killed": a half-written log line is left behind
    state = json.loads((tmp_path / "b" / "search" / "state.json").read_text())
    assert (state["in_flight"] is not None) == overlap
    with open(tmp_path / "b" / "search" / "log.jsonl", "a") as f:
        f.write('{"generation": 2, "id": 99, "text": "cut')
    resumed = Search(config(tmp_path / "b"), resume=True, progress=False)
    assert resumed.generation == 1
    resumed.run()
    read = lambda p: [json.loads(line) for line in (p / "search" / "log.jsonl").read_text().splitlines()]  # noqa: E731
    strip = lambda entries: [{k: v for k, v in e.items() if k != "scored"} for e in entries]  # noqa: E731
    assert strip(read(tmp_path / "a")) == strip(read(tmp_path / "b"))
    assert straight.best.fitness == resumed.best.fitness
    # every structure is trained once, also when a child equals one of the generation in flight
    trained = [e["structural"] for e in read(tmp_path / "a") if e["scored"] in ("trained", "hurdle", "rejected")]
    assert len(trained) == len(set(trained))
    assert (
        json.loads((tmp_path / "a" / "search" / "state.json").read_text())["in_flight"] is None
    )  # nothing past the end
    with pytest.raises(ConfigError, match="already holds a search"):
        Search(tiny_config(tmp_path / "a"), progress=False)
    with pytest.raises(ConfigError, match="differs"):
        Search(tiny_config(tmp_path / "a", tournament=3), resume=True, progress=False)


def test_a_search_precompiles_before_scoring_its_seed_and_resumes_to_the_same_log(tmp_path):
    """fitness.precompile with a hurdle: the calls are compiled before the hurdle's reference and
    the seed are scored (which then compile nothing), the time counts as compiling, and the search
    (fresh, then resumed: precompiled again) logs what one without precompile logs."""
    fitness = {
        **TINY_FITNESS,
        "tasks": ["quadratic-10-cond100", "digits-mlp-relu32"],
        "steps": [30, 10],
        "hurdle": 1.0,
        "batch": 2,
    }
    make = lambda d, **f: from_dict(
        SearchConfig,
        {  # noqa: E731
            "search": {"population": 6, "tournament": 2, "children": 4, "generations": 2, "max_statements": 16},
            "fitness": {**fitness, **f},
            "run": {"output_dir": str(d)},
        },
    )
    plain = Search(make(tmp_path / "plain"), progress=False)
    plain.run()
    ahead = Search(make(tmp_path / "ahead", precompile=[2]), progress=False)
    compiled = set(ahead.evaluate._executables)
    assert len(compiled) == 4 and ahead.counters["compile_seconds"] > 0  # 2 tasks × padded sizes 1, 2
    assert ahead.evaluate.hurdle.reference == plain.evaluate.hurdle.reference
    ahead.step()
    resumed = Search(make(tmp_path / "ahead", precompile=[2]), resume=True, progress=False)
    assert resumed.counters["compile_seconds"] > ahead.counters["compile_seconds"]
    resumed.run()
    read = lambda d: [
        {k: v for k, v in json.loads(line).items() if k != "scored"}  # noqa: E731
        for line in (d / "log.jsonl").read_text().splitlines()
    ]
    assert read(tmp_path / "ahead") == read(tmp_path / "plain")


def test_search_from_adamw_improves_on_the_seed_within_a_ci_budget(tmp_path):
    """The embedded proxy: an MLP on digits, 60 steps, with the seed's lr input at 0.3 (its
    step size is then too small for so short a run, which a CI-sized search can fix). With 4
    generations of 6 children it does for each of the seeds 0-4 (with 3, for 4 of them)."""
    config = from_dict(
        SearchConfig,
        {
            "search": {"population": 8, "tournament": 2, "children": 6, "generations": 4, "max_statements": 16},
            "fitness": {**TINY_FITNESS, "tasks": ["digits-mlp-relu32"], "steps": 60, "lr_multipliers": [0.3]},
            "run": {"output_dir": str(tmp_path / "search")},
        },
    )
    search = Search(config, progress=False)
    best = search.run()
    assert best.fitness < search.seed_fitness
    stats = search.statistics()
    assert stats["children"] == 24 and 0 <= stats["cache_hit_rate"] <= 1
    entries = top(tmp_path / "search", 3)
    assert entries[0]["fitness"] == pytest.approx(best.fitness)
    assert [e["fitness"] for e in entries] == sorted(e["fitness"] for e in entries)


def test_mutation_workers_make_the_same_search(tmp_path):
    """search.workers: children mutated in worker processes, each with its own generator, so the
    search is the same with 2 workers as in this process; a resume may change the number."""
    read = lambda p: (p / "search" / "log.jsonl").read_text()  # noqa: E731
    Search(tiny_config(tmp_path / "a", generations=2, children=6), progress=False).run()
    parallel = Search(tiny_config(tmp_path / "b", generations=2, children=6, workers=2), progress=False)
    parallel.step()
    parallel.close()
    Search(tiny_config(tmp_path / "b", generations=2, children=6), resume=True, progress=False).run()
    assert read(tmp_path / "a") == read(tmp_path / "b")
    with pytest.raises(ConfigError, match="search.workers"):
        tiny_config(tmp_path, workers=-1)


def test_cache_answers_renamed_duplicates_without_training(tmp_path):
    search = Search(tiny_config(tmp_path), progress=False)
    trained = search.counters["trained"]
    renamed = parse(str(seed("adamw_paper")).replace("sqrt_v", "root"))
    scores, how = search._score([check(renamed)])
    assert how == ["structural"] and scores[0] == search.seed_fitness
    assert search.counters["trained"] == trained


def test_funnel_promotes_only_programs_that_beat_tuned_adamw(tmp_path):
    config = dataclasses.replace(
        tiny_config(tmp_path),
        funnel=dataclasses.replace(SearchConfig().funnel, tasks=("quadratic-10-cond100",), steps=(40,)),
    )
    diverging = "def train(w, g, m, v, lr):\n  update = g * 1000.0\n  return update, m, v\n"
    no_epsilon = (
        "def train(w, g, m, v, lr):\n g2 = square(g)\n v = interp(g2, v, 0.999)\n r = sqrt(v)\n u = g / r\n"
        " update = u * lr\n return update, m, v\n"
    )
    records = funnel(config, [format_program(seed("adamw")), diverging, no_epsilon], progress=False)
    assert records[1]["promoted"] is False and records[1]["stages"][0]["fitness"] is None
    assert records[2]["promoted"] is False and records[2]["stages"] == [] and "non-finite" in records[2]["rejected"]
    assert records[0]["stages"][0]["adamw_fitness"] is not None


def test_a_funnel_stage_picks_the_rate_on_some_seeds_and_scores_it_on_others():
    """No winner's curse: the rate is the best by median over the tuning seeds, the score is
    log(median) at that rate over other seeds (checked against the evaluator's raw losses)."""
    spec = FitnessSpec(
        tasks=("quadratic-10-cond100",),
        steps=30,
        seeds=2,
        lr_multipliers=(0.01, 0.1, 1.0),
        eval_batches=1,
        length=16,
        batch=4,
        interpreter="jit",
        seed=5,
    )
    graphs = [check(seed("adamw")), check(seed("lion"))]
    scores, chosen = stage_scores(spec, graphs, 3)
    tune = evaluator(dataclasses.replace(spec, seeds=3)).losses(graphs)[:, 0]
    test = evaluator(dataclasses.replace(spec, seeds=3, seed=5 + FUNNEL_TEST_SEED)).losses(graphs)[:, 0]
    assert not np.allclose(tune, test)  # other seeds
    for i in range(2):
        best = int(np.argmin(np.median(tune[i], axis=-1)))
        assert chosen[i] == best
        assert scores[i] == pytest.approx(np.log(np.median(test[i, best])), rel=1e-6)


def test_funnel_tunes_candidates_over_adamws_rates(tmp_path):
    """AdamW that scales its lr input by the seeds' 1e-3 sees exactly the reference's rates, so it
    ties tuned AdamW; with the proxy's 4 multipliers (the old funnel) it lost from the grid."""
    config = dataclasses.replace(
        tiny_config(tmp_path),
        funnel=dataclasses.replace(SearchConfig().funnel, tasks=("quadratic-10-cond100",), steps=(40,)),
    )
    scaled = format_program(seed("adamw")).replace(
        "  update = update * lr\n", "  lr = lr * 0.001\n  update = update * lr\n"
    )
    assert scaled != format_program(seed("adamw"))
    stage = funnel(config, [scaled], progress=False)[0]["stages"][0]
    assert abs(stage["fitness"] - stage["adamw_fitness"]) < 1e-3, stage
    with pytest.raises(ConfigError, match="funnel.lr_multipliers"):
        dataclasses.replace(config, funnel=dataclasses.replace(config.funnel, lr_multipliers=(1.0,)))


def test_the_program_shipped_after_the_funnel_is_the_promoted_one_with_the_largest_margin():
    def record(text, stages, promoted):
        return {
            "text": text,
            "promoted": promoted,
            "stages": [{"fitness": f, "adamw_fitness": a, "beats_adamw": f < a} for f, a in stages],
        }

    records = [
        record("a", [(-2.0, -2.1)], False),
        record("b", [(-2.2, -2.1), (-1.9, -1.8)], True),
        record("c", [(-2.5, -2.1), (-1.81, -1.8)], True),
        record("d", [(-3.0, -2.1)], False),
    ]
    assert promoted_program(records) == "c"  # mean margins: b -0.1, c -0.205; d stopped at stage 2
    assert promoted_program(records[:1]) is None


def test_simplifier_removes_dead_code_and_finds_sign():
    program, notes = simplify(seed("lion_raw"))
    text = format_program(program)
    assert "cosh" not in text and "sign(" in text and "sqrt" not in text
    assert any("dead code" in n for n in notes) and any("sign" in n for n in notes)
    assert len(program.statements) == 9  # 12 - cosh (dead) - m*m and sqrt (m/sqrt(m*m) -> sign(m))


def test_ablation_bypasses_statements_within_tolerance():
    """With a fitness that only counts clip/arcsin statements, ablation removes exactly those."""

    def fitness(graphs):
        return np.array([sum(op in ("clip", "arcsin") for op, _ in g.nodes) * 1.0 for g in graphs])

    program, notes = simplify(seed("lion_raw"), fitness=fitness, tolerance=0.0)
    ops = [s.op for s in program.statements]
    assert "clip" not in ops and "arcsin" not in ops and "sign" in ops
    assert sum("ablated" in n for n in notes) == 2


def test_search_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="populaton"):
        from_dict(SearchConfig, {"search": {"populaton": 10}})
    with pytest.raises(ConfigError, match="strategy"):
        from_dict(SearchConfig, {"search": {"strategy": "annealing"}})


def test_program_commands(tmp_path, capsys):
    source = tmp_path / "lion_raw.txt"
    source.write_text(format_program(seed("lion_raw")))
    assert main(["program", "check", str(source)]) == 0
    assert "8% redundant" in capsys.readouterr().out
    assert main(["program", "simplify", str(source)]) == 0
    assert "sign(" in capsys.readouterr().out
    assert main(["program", "export", str(source), str(tmp_path / "exported"), "--learning-rate", "1.0"]) == 0
    import lopt

    assert lopt.read_manifest(tmp_path / "exported")["kind"] == "program"
    bad = tmp_path / "bad.txt"
    bad.write_text("def train(w, g, m, v, lr):\n  a = sqr(g)\n  return a, m, v\n")
    assert main(["program", "check", str(bad)]) == 2
    assert "line 2: unknown function 'sqr'" in capsys.readouterr().err


def search_toml(tmp_path, generations: int, steps: int, extra: str = "") -> Path:
    """A tiny `lopt search` config on the quadratic (population 6, 4 children a generation)
    writing to tmp_path/run; `extra` is appended to its [fitness] section (more sections may follow)."""
    config = tmp_path / "search.toml"
    config.write_text(
        f"[search]\npopulation = 6\nchildren = 4\ngenerations = {generations}\nmax_statements = 16\n"
        f"[fitness]\ntasks = [\"quadratic-10-cond100\"]\nsteps = {steps}\nseeds = 1\nlr_multipliers = [1.0]\n"
        f"eval_batches = 1\nlength = 16\nbatch = 4\n{extra}[run]\noutput_dir = \"{tmp_path / 'run'}\"\n"
    )
    return config


def test_lopt_search_command_runs_resumes_and_lists(tmp_path, capsys):
    config = search_toml(tmp_path, generations=1, steps=30)
    assert main(["search", str(config), "--quiet", "--no-ablate"]) == 0
    out = capsys.readouterr().out
    assert "programs/s" in out and "cache hit rate" in out and "adamw" in out and "lion" in out
    assert (tmp_path / "run" / "best.txt").is_file()
    meta, _ = lopt.load_meta(tmp_path / "run")  # no funnel: the program at lr input 1
    assert meta.text == (tmp_path / "run" / "best.txt").read_text() and meta.learning_rate == 1.0
    references = json.loads((tmp_path / "run" / "summary.json").read_text())["proxy_references"]
    assert set(references) == {"adamw", "lion"} and all(v is None or v > -100 for v in references.values())
    assert main(["search", "--resume", str(tmp_path / "run"), "--quiet", "--no-ablate"]) == 0
    assert main(["search", "top", str(tmp_path / "run"), "-n", "2"]) == 0
    assert "#1  fitness" in capsys.readouterr().out
    assert main(["search", str(config), "--quiet"]) == 2  # refuses to overwrite
    assert to_graph(parse((tmp_path / "run" / "best.txt").read_text()))


def test_search_curves_follow_the_log_and_plot(tmp_path, capsys):
    """`lopt search plot`: the best so far is the running minimum of the log's finite fitness per
    generation (computed here from log.jsonl directly), NaN-free, and a PNG is written."""
    config = search_toml(tmp_path, generations=3, steps=20, extra='interpreter = "jit"\n')
    assert main(["search", str(config), "--quiet", "--no-ablate"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    data = curves(tmp_path / "run")
    assert data["generation"] == [0, 1, 2, 3]
    running = np.inf
    for g, best in zip(data["generation"], data["best_so_far"]):
        running = min([running] + [e["fitness"] for e in log if e["generation"] == g and e["fitness"] is not None])
        assert best == pytest.approx(running)
    assert data["trained_so_far"][-1] == sum(e["scored"] in ("trained", "hurdle", "seed") for e in log)
    capsys.readouterr()
    assert main(["search", "plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    assert main(["search", "plot", str(tmp_path / "nowhere")]) == 2
    assert "no search log" in capsys.readouterr().err


def test_a_copied_search_folder_resumes_in_place(tmp_path):
    """Issue 17 (3): `--resume DIR` continues the search in DIR, not in the folder its
    config.json was first written for; the original is left as it was."""
    import shutil

    from lopt.meta_train.search.config import config_from_dir

    original = tmp_path / "a" / "search"
    Search(tiny_config(tmp_path / "a"), progress=False).step()
    before = (original / "log.jsonl").read_text()
    copy = tmp_path / "moved"
    shutil.copytree(original, copy)
    resumed = Search(config_from_dir(copy), resume=True, progress=False)
    resumed.run()
    assert (original / "log.jsonl").read_text() == before
    assert len((copy / "log.jsonl").read_text()) > len(before)


def test_simplifier_keeps_adams_epsilon():
    """Issue 17 (5): `m̂ / (sqrt(v̂) + 1e-8)` is not `m̂ / sqrt(v̂)` where a gradient is exactly
    zero (0 against NaN); the simplified AdamW must update like the original there."""
    import jax.numpy as jnp

    from lopt.programs.interpret import to_optax

    program, notes = simplify(seed("adamw"))
    assert "1e-08" in format_program(program) and not any("add(...)" in n for n in notes)
    updates = []
    for p in (seed("adamw"), program):
        opt = to_optax(p, 1e-3)
        update, _ = opt.update(jnp.array([0.5, 0.0]), opt.init(jnp.zeros(2)), jnp.zeros(2))
        updates.append(np.asarray(update))
    np.testing.assert_allclose(updates[1], updates[0], rtol=1e-6)
    assert np.all(np.isfinite(updates[1]))


def test_fitness_config_ranges_and_long_program_errors_are_short():
    """Issue 17 (7): fitness.seeds=0 was accepted; a 1 MB constant was echoed whole."""
    with pytest.raises(ConfigError, match="fitness.seeds"):
        from_dict(SearchConfig, {"fitness": {"seeds": 0}})
    from lopt.programs.lang import ProgramError

    huge = "def train(w, g, m, v, lr):\n  update = g * " + "9" * 1_000_000 + "x\n  return update, m, v\n"
    with pytest.raises(ProgramError) as error:
        parse(huge)
    assert len(str(error.value)) < 400


def test_fitness_steps_per_task():
    """fitness.steps may give one number per task (a long proxy beside short ones); the
    evaluator trains each task that long, so a run of 1 step differs from one of 40."""
    with pytest.raises(ConfigError, match="2 numbers for 1 tasks"):
        from_dict(SearchConfig, {"fitness": {"tasks": ["quadratic-10-cond100"], "steps": [10, 20]}})
    with pytest.raises(ConfigError, match="fitness.steps"):
        from_dict(SearchConfig, {"fitness": {"tasks": ["quadratic-10-cond100", "rosenbrock-2"], "steps": [10, 0]}})
    spec = FitnessSpec(
        tasks=("quadratic-10-cond100", "rosenbrock-2"),
        steps=(1, 40),
        seeds=1,
        lr_multipliers=(1.0,),
        eval_batches=1,
        batch=2,
    )
    assert spec.task_steps("rosenbrock-2") == 40 and spec.inner_steps_per_program == 41
    graph = check(seed("adamw_paper_eps"))
    long_run = evaluator(spec).losses([graph])[0, :, 0, 0]
    short_run = evaluator(dataclasses.replace(spec, steps=1)).losses([graph])[0, :, 0, 0]
    assert long_run[0] == pytest.approx(short_run[0], rel=1e-6)  # same 1-step run on the first task
    assert long_run[1] < short_run[1]  # 40 steps of AdamW-paper-eps move rosenbrock further down


def test_meta_validation_logs_the_top_programs_and_picks_the_shipped_one(tmp_path, capsys):
    """Chen et al.'s meta-validation: every `every` generations the best programs not yet
    validated are trained on the validation task and logged; resume keeps what was validated;
    the summary's simplified program is the best by validation."""
    config = search_toml(
        tmp_path,
        generations=4,
        steps=20,
        extra='interpreter = "jit"\n[validation]\ntask = "rosenbrock-2"\nsteps = 30\nevery = 2\ntop = 2\n',
    )
    assert main(["search", str(config), "--quiet", "--no-ablate"]) == 0
    out = capsys.readouterr().out
    assert "best by meta-validation on rosenbrock-2" in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert {r["generation"] for r in rows} == {2, 4} and all(
        len([r for r in rows if r["generation"] == g]) <= 2 for g in (2, 4)
    )
    assert len({r["text"] for r in rows}) == len(rows)  # each program validated once
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    best = min((r for r in rows if r["validation"] is not None), key=lambda r: r["validation"])
    assert summary["best_validated"]["text"] == best["text"]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert set(state["validated"]) == {r["text"] for r in rows}
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('task = "rosenbrock-2"', 'task = "nope"').replace('/run"', '/other"'))
    capsys.readouterr()
    assert main(["search", str(bad), "--quiet"]) == 2
    assert "validation.task" in capsys.readouterr().err


def test_funnel_candidates_by_meta_validation_are_the_best_distinct_ones(tmp_path):
    adamw, lion = format_program(seed("adamw")), format_program(seed("lion"))
    renamed = adamw.replace("denominator", "den")
    rows = [
        {"generation": 10, "id": 1, "text": adamw, "fitness": -1.0, "validation": 0.9},
        {"generation": 10, "id": 2, "text": lion, "fitness": -1.0, "validation": 0.8},
        {"generation": 20, "id": 3, "text": FOUR_ROUNDS, "fitness": -1.0, "validation": None},
        {"generation": 20, "id": 4, "text": renamed, "fitness": -1.0, "validation": 0.7},
    ]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    assert structural_hash(parse(renamed)) == structural_hash(parse(adamw))
    assert validated(tmp_path, 5) == [renamed, lion]
    assert validated(tmp_path, 1) == [renamed] and validated(tmp_path, 0) == []
    assert validated(tmp_path / "none", 3) == []


def test_precompiled_population_calls_are_reused_and_give_the_same_losses():
    """fitness.precompile: every (task, rounds, kind, padded size) compiled ahead in threads; a
    later evaluation compiles nothing more and equals an evaluator that compiled lazily."""
    spec = FitnessSpec(**{**TINY_FITNESS, "tasks": ("quadratic-10-cond100",), "batch": 8})
    graphs = [check(seed("adamw_paper")), check(seed("lion_raw"))]
    rounds = max(rounds_needed(g) for g in graphs)
    ahead = BatchedEvaluator(spec)
    assert ahead.precompile([rounds, rounds + 1], workers=2) == 6  # padded sizes of a batch of 8: 2, 4, 8
    compiled = ahead.compile_seconds
    np.testing.assert_allclose(ahead.losses(graphs), BatchedEvaluator(spec).losses(graphs))
    assert ahead.compile_seconds == compiled
    assert ahead.precompile([rounds]) == 0
    # the matrix space's calls (programs with matrix functions run in batches of their own)
    muon = check(seed("muon"))
    assert rounds_needed(muon) not in (rounds, rounds + 1)
    assert ahead.precompile([rounds_needed(muon)], matrix=True) == 6  # 'step' and 'step-matrix', 3 sizes each
    compiled = ahead.compile_seconds
    ahead.losses([muon])
    assert ahead.compile_seconds == compiled


def test_lr_scales_multiply_each_tasks_grid():
    """fitness.lr_scales: task t's runs get lr_multipliers × lr_scales[t]; the same losses as a
    spec whose multipliers carry the scale; a wrong count or a non-positive scale is an error."""
    base = {**TINY_FITNESS, "tasks": ("quadratic-10-cond100", "digits-mlp-relu32"), "steps": 10}
    scaled = FitnessSpec(**{**base, "lr_multipliers": (1.0, 3.0), "lr_scales": (0.5, 2.0)})
    assert scaled.task_lrs("quadratic-10-cond100") == (0.5, 1.5) and scaled.task_lrs("digits-mlp-relu32") == (2.0, 6.0)
    graphs = [check(seed("adamw_paper"))]
    got = BatchedEvaluator(scaled).losses(graphs)
    for t, multipliers in enumerate([(0.5, 1.5), (2.0, 6.0)]):
        plain = BatchedEvaluator(FitnessSpec(**{**base, "lr_multipliers": multipliers}))
        np.testing.assert_allclose(got[:, t], plain._task_losses(graphs, t), rtol=1e-6)
    for bad in [(1.0,), (1.0, 0.0), (1.0, float("inf"))]:
        with pytest.raises(ConfigError, match="fitness.lr_scales"):
            FitnessSpec(**{**base, "lr_scales": bad})


def test_batches_group_programs_by_rounds_and_start_at_the_fewest_precompiled():
    """A batch runs as many rounds as its longest program: programs are batched in order of the
    rounds they need (two 1-round and two 3-round programs in batches of 2 make one call of each,
    not two of 3 rounds), and with `precompile` no batch is encoded with fewer rounds than its
    smallest entry. The losses are the same either way."""
    spec = FitnessSpec(**{**TINY_FITNESS, "batch": 2, "lr_multipliers": (1.0,)})
    graphs = [check(seed(name)) for name in ("adamw", "signsgd", "lion_raw", "sgd_momentum")]  # 3, 1, 3, 1 rounds
    grouped = BatchedEvaluator(spec)
    losses = grouped.losses(graphs)
    assert sorted(key[1] for key in grouped._executables) == [1, 3]
    floored = BatchedEvaluator(dataclasses.replace(spec, precompile=(2,)))
    np.testing.assert_allclose(floored.losses(graphs), losses, rtol=1e-5)
    assert sorted(key[1] for key in floored._executables) == [2, 3]
    one_by_one = np.concatenate([BatchedEvaluator(dataclasses.replace(spec, batch=1)).losses([g]) for g in graphs])
    np.testing.assert_allclose(losses, one_by_one, rtol=1e-5)


def test_the_train_metric_is_the_evals_final_train_loss():
    """fitness.metric = 'train' scores a run by the mean minibatch train loss of its last 10% of
    steps (eval.metrics.final_loss, what `lopt eval` tunes and reports); both evaluators equal a
    step-by-step Python loop of the program's optax transformation on the same keys."""
    import jax

    from lopt.eval.metrics import final_loss
    from lopt.programs.interpret import to_optax
    from lopt.meta_train.search.scoring import keys_of
    from lopt.tasks import build, task_spec

    spec = FitnessSpec(
        tasks=("digits-mlp-relu32",),
        steps=25,
        seeds=2,
        lr_multipliers=(0.3, 3.0),
        eval_batches=1,
        batch=2,
        metric="train",
    )
    graph = check(seed("adamw_paper_eps"))
    task = build(task_spec("digits-mlp-relu32"))
    reference = np.zeros((2, 2))
    for i, lr in enumerate(spec.task_lrs("digits-mlp-relu32")):
        for j, key in enumerate(keys_of(spec, "digits-mlp-relu32")):
            init_key, train_key, _ = jax.random.split(key, 3)
            params, opt = task.init(init_key), to_optax(seed("adamw_paper_eps"), lr)
            state, losses = opt.init(params), []
            for k in jax.random.split(train_key, 25):
                loss, grads = jax.value_and_grad(task.loss)(params, task.batch(k, "train"))
                updates, state = opt.update(grads, state, params)
                params = jax.tree.map(lambda p, u: p + u, params, updates)
                losses.append(float(loss))
            reference[i, j] = final_loss(np.array(losses))  # the mean of the last round(2.5) = 2 steps
    for make in (BatchedEvaluator, JitEvaluator):
        np.testing.assert_allclose(make(spec).losses([graph])[0, 0], reference, rtol=2e-4)
    test = JitEvaluator(dataclasses.replace(spec, metric="test")).losses([graph])[0, 0]
    assert not np.allclose(test, reference, rtol=1e-2)  # the other metric is another number
    with pytest.raises(ConfigError, match="fitness.metric: 'valid' is not one of test, train"):
        from_dict(SearchConfig, {"fitness": {"metric": "valid"}})
    with pytest.raises(ConfigError, match="funnel.metric: 'loss' is not one of test, train"):
        from_dict(SearchConfig, {"funnel": {"metric": "loss"}})


def test_lopt_search_funnel_funnels_a_finished_search_again(tmp_path, capsys):
    """`lopt search funnel DIR`: a finished search (here one without a funnel) is funnelled under
    --set/--config settings; funnel.json, summary.json and best.txt are rewritten as `finish`
    writes them, each stage scored by the funnel's metric; a folder without a finished search or
    with a corrupt summary is a one-line error, and summary.json is left as it was."""
    config = search_toml(tmp_path, generations=1, steps=20, extra='interpreter = "jit"\n')
    assert main(["search", str(config), "--quiet", "--no-ablate"]) == 0
    run = tmp_path / "run"
    assert "funnel" not in json.loads((run / "summary.json").read_text())
    stage = ["--set", "funnel.tasks=['quadratic-10-cond100']", "--set", "funnel.steps=[30]", "--set", "funnel.top=2"]
    capsys.readouterr()
    assert main(["search", "funnel", str(run), *stage, "--set", "funnel.metric='test'", "--quiet"]) == 0
    records = json.loads((run / "funnel.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert records and summary["funnel"] == records
    assert all(s["metric"] == "test" and s["task"] == "quadratic-10-cond100" for r in records for s in r["stages"])
    assert (run / "best.txt").read_text() == summary["shipped"]["text"]
    assert summary["shipped"]["by"] == ("funnel" if promoted_program(records) else "proxy fitness")
    # the folder loads as the shipped program at the step size the funnel chose for it
    # (the funnel's record of the shipped program; none when a probe rejected it: then lr input 1)
    winner = promoted_program(records)
    shipped_record = next((r for r in records if r["text"] == (winner or summary["shipped"]["text"])), None)
    expected = shipped_record["stages"][-1]["lr"] if shipped_record and shipped_record["stages"] else 1.0
    assert summary["shipped"].get("lr", 1.0) == expected
    meta, theta = lopt.load_meta(run)
    assert meta.text == summary["shipped"]["text"] and meta.learning_rate == expected
    assert float(theta["learning_rate"]) == pytest.approx(expected)
    assert "wrote" in capsys.readouterr().out
    assert main(["search", "funnel", str(run), *stage, "--quiet"]) == 0  # the default metric: train
    assert all(s["metric"] == "train" for r in json.loads((run / "funnel.json").read_text()) for s in r["stages"])
    assert main(["search", "funnel", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert main(["search", "funnel", str(run), "--quiet"]) == 2  # its own config has no funnel stages
    assert "funnel.tasks: the config has no funnel stages" in capsys.readouterr().err
    (run / "summary.json").write_text('{"simplified": 3}')
    assert main(["search", "funnel", str(run), *stage, "--quiet"]) == 2
    assert "not a search summary" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == '{"simplified": 3}'


def test_a_shipped_program_checkpoint_carries_its_step_size(tmp_path):
    """`ship_checkpoint`: the search folder loads (`lopt.load(folder)`) as the shipped program
    with the lr input the funnel chose, and the optimizer it gives steps by that rate."""
    text = format_program(seed("adamw"))
    summary = {"shipped": {"by": "funnel", "text": text, "lr": 3e-2}}
    ship_checkpoint(tmp_path, summary, say=lambda line: None)
    meta, theta = lopt.load_meta(tmp_path)
    assert meta.text == text and meta.learning_rate == 3e-2 and float(theta["learning_rate"]) == pytest.approx(3e-2)
    params, grads = {"w": jnp.ones((3,))}, {"w": jnp.full((3,), 0.5)}
    opt = lopt.load(tmp_path)
    updates, _ = opt.update(grads, opt.init(params), params)
    adamw = optax.adamw(3e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4)  # the seed is optax's AdamW
    reference, _ = adamw.update(grads, adamw.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(reference["w"]), rtol=1e-5)
    ship_checkpoint(tmp_path, {"shipped": {"by": "proxy fitness", "text": text}}, say=lambda line: None)
    assert lopt.load_meta(tmp_path)[0].learning_rate == 1.0  # no funnel: lr input 1, and rewritten in place


def test_lopt_program_export_tunes_the_step_size_on_the_funnel_stages(tmp_path, capsys):
    """`lopt program export FILE OUT --tune CONFIG`: the lr input is the one rate with the lowest
    summed log median loss over the config's funnel stages on the tuning seeds (under its
    schedule), the checkpoint carries it and the schedule; contradicting options and a folder
    lopt did not write are one line and write nothing."""
    config = search_toml(
        tmp_path,
        generations=1,
        steps=20,
        extra='interpreter = "jit"\nschedule = "cosine"\n[funnel]\ntasks = ["rosenbrock-2", "quadratic-10-cond100"]\n'
        'steps = [30, 40]\n'
        "seeds = 2\nadamw_lrs = [3e-2, 1e-1, 3e-1, 1.0]\nlr_multipliers = [30.0, 100.0, 300.0, 1000.0]\n",
    )
    scaled = "  lr = lr * 0.001\n  update = update * lr\n"
    text = format_program(seed("adamw")).replace("  update = update * lr\n", scaled)
    source = tmp_path / "program.txt"
    source.write_text(text)
    out = tmp_path / "shipped"
    assert main(["program", "export", str(source), str(out), "--tune", str(config)]) == 0
    searched = load_config(SearchConfig, config)
    summed = 0.0
    grid = (30.0, 100.0, 300.0, 1000.0)
    for task, steps in (("rosenbrock-2", 30), ("quadratic-10-cond100", 40)):  # the funnel's tuning seeds
        spec = searched.fitness.for_tasks((task,), steps, batch=1, lr_multipliers=grid, metric="train")
        losses = evaluator(dataclasses.replace(spec, seeds=2)).losses([check(parse(text))])[0, 0]  # [lrs, seeds]
        logged = np.log(np.median(np.where(np.isfinite(losses), losses, np.inf), axis=-1))
        summed = summed + logged
    expected = grid[int(np.argmin(summed))]
    # the stages disagree, and the last (largest) one alone would ship another rate
    assert grid[int(np.argmin(logged))] != expected
    meta, theta = lopt.load_meta(out)
    assert meta.learning_rate == expected and float(theta["learning_rate"]) == pytest.approx(expected)
    assert meta.schedule == "cosine"
    assert f"lr input {expected:g}" in capsys.readouterr().out
    for extra, message in (
        (["--learning-rate", "2"], "not both"),
        (["--schedule", "constant"], "differs from"),
        ([], "exists"),
    ):
        assert main(["program", "export", str(source), str(out), "--tune", str(config), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["program", "export", str(source), str(tmp_path / "other"), "--set", "funnel.seeds=1"]) == 2
    assert "there is no --tune" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert lopt.load_meta(out)[0].learning_rate == expected  # untouched
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(["program", "export", str(source), str(stranger), "--tune", str(config), "--overwrite"]) == 2
    assert "not a lopt optimizer checkpoint" in capsys.readouterr().err
    assert (stranger / "notes.txt").read_text() == "mine"

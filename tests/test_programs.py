"""Optimizer programs: seeds equal optax, both interpreters agree, hashes, liveness, parser."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lopt
from lopt.programs import (
    ProgramError,
    check,
    format_program,
    from_program,
    parse,
    prune,
    redundant_fraction,
    seed,
    structural_hash,
    to_graph,
    to_optax,
)
from lopt.programs.analysis import live_outputs
from lopt.programs.interpret import constants_of
from lopt.programs.optimizer import ProgramOptimizer
from lopt.programs.functional import functional_hashes

from lopt.programs.batched import GROUP_OF, GROUPS, _group_results, encode, encode_population, run_encoded, run_unrolled
from lopt.programs.lang import Const, Program, Statement, Var
from lopt.programs.library import FUNCTIONS

PARAMS = {
    "scalar": jnp.array(0.7),
    "vector": jnp.linspace(-1.0, 1.0, 5),
    "matrix": jnp.arange(12.0).reshape(3, 4) / 10.0,
    "conv": jnp.cos(jnp.arange(2 * 3 * 2 * 4.0)).reshape(2, 3, 2, 4),
}


def gradient_sequence(steps):
    keys = jax.random.split(jax.random.key(0), steps)
    return [jax.tree.map(lambda p, k=k: jax.random.normal(k, jnp.shape(p)), PARAMS) for k in keys]


def run(opt, steps=12):
    params, state = PARAMS, opt.init(PARAMS)
    trajectory = []
    for grads in gradient_sequence(steps):
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(updates)
    return trajectory


@pytest.mark.parametrize(
    "name, reference",
    [
        ("adamw", optax.adamw(3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4)),
        ("lion", optax.lion(3e-3, b1=0.9, b2=0.99, weight_decay=1e-3)),
        ("sgd_momentum", optax.sgd(3e-3, momentum=0.9)),
        ("signsgd", optax.chain(optax.scale_by_sign(), optax.scale(-3e-3))),
    ],
)
def test_seed_programs_equal_optax(name, reference):
    ours = run(to_optax(seed(name), 3e-3))
    theirs = run(reference)
    for a, b in zip(ours, theirs):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-8), a, b)


def _flat(tree):
    return jnp.concatenate([jnp.reshape(x, -1) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("name", ["adamw", "lion", "sgd_momentum", "adamw_paper", "lion_raw"])
def test_batched_interpreter_equals_tree_interpreter(name):
    """The encoded program on the flattened pytree gives the same updates as to_optax."""
    graph = check(seed(name))
    leaves = jax.tree.leaves(PARAMS)
    sizes = tuple(leaf.size for leaf in leaves)
    encoded = jax.tree.map(jnp.asarray, encode(graph))
    w, m, v = _flat(PARAMS), jnp.zeros(sum(sizes)), jnp.zeros(sum(sizes))
    step = jax.jit(run_encoded, static_argnums=(7,))
    expected = run(to_optax(seed(name), 3e-3), steps=6)
    for t, (grads, reference) in enumerate(zip(gradient_sequence(6), expected), start=1):
        update, m, v = step(encoded, w, _flat(grads), m, v, 3e-3, float(t), sizes)
        np.testing.assert_allclose(-update, _flat(reference), rtol=1e-5, atol=1e-7)
        w = w - update


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_library_function_agrees_between_the_interpreters(name):
    """Each function (tensor arguments, then a scalar in the last slot, then all-scalar arguments
    for the tree-level ones) gives the same update through the batched interpreter as through
    to_optax, on a pytree of four tensors (so per-tensor norms differ from the global one)."""
    arity = FUNCTIONS[name].arity
    tensor_args = ["g", "w", "m"][:arity]
    variants = [tensor_args, tensor_args[:-1] + ["s"]] if arity > 1 else [tensor_args]
    if FUNCTIONS[name].kind != "elementwise":
        variants.append(["s", "t"][:arity] if arity > 1 else ["s"])
    if name == "clip_by_global_norm":  # its bound must be a scalar
        variants = [v for v in variants if v[1] != "w"]
    leaves = jax.tree.leaves(PARAMS)
    shapes = tuple(leaf.shape for leaf in leaves)  # matrix functions read each tensor's shape
    size = sum(leaf.size for leaf in leaves)
    grads = gradient_sequence(1)[0]
    m0 = jax.tree.map(lambda p: 0.5 * jnp.sin(3.0 * p) + 0.1, PARAMS)
    infix = FUNCTIONS[name].infix
    for args in variants:
        call = f" {infix} ".join(args) if infix else f"{name}({', '.join(args)})"
        text = f"""
def train(w, g, m, v, lr):
  s = global_norm(g)
  s = s * 0.37
  t = lr + 0.2
  x = {call}
  update = x * g
  return update, m, v
"""
        program = parse(text)
        opt = to_optax(program, 0.3)
        state = opt.init(PARAMS)._replace(m=m0) if opt.init(PARAMS).m != () else opt.init(PARAMS)
        expected, _ = opt.update(grads, state, PARAMS)
        encoded = jax.tree.map(jnp.asarray, encode(check(program)))
        update, _, _ = jax.jit(run_encoded, static_argnums=(7,))(
            encoded, _flat(PARAMS), _flat(grads), _flat(m0), jnp.zeros(size), 0.3, 1.0, shapes
        )
        np.testing.assert_allclose(-np.asarray(update), np.asarray(_flat(expected)), rtol=2e-5, atol=1e-6, err_msg=call)


_WIDE = np.concatenate(
    [np.random.default_rng(0).normal(size=4000) * scale for scale in (1e-6, 1e-3, 0.3, 1, 3, 30, 100, 1e4, 1e12)]
    + [np.array([0, -0.0, 1, -1, 0.5, 2, 3, -2, -3, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-30])]
).astype(np.float32)


@pytest.mark.parametrize("name", sorted(n for n in FUNCTIONS if GROUP_OF[n] not in ("tree", "matrix")))
def test_each_slots_shared_formulation_matches_the_library_function(name):
    """The batched interpreter computes a slot's functions from shared calls (one exp, expm1 and
    log for the exp/log group; one log and one exp for the inverse group; arctan from a
    polynomial; one division for div and reciprocal). Against the library's jnp function on
    1e-6..1e30, ±0, ±inf and NaN: the same NaNs, the same infinities, 4e-5 relative error
    (arctanh near −1 and power at 1e12 are the worst, ~3e-5 and ~7e-6). Excluded: cosh and sinh
    in 88.7 < |x| < 89.4, where exp|x| overflows before they do, and power(−inf, ·)."""
    group = GROUP_OF[name]
    op = GROUPS[group].index(name)
    b = np.random.default_rng(1).choice([0, 1, 2, 3, -1, -2, 0.5, 1 / 3, -0.5, 2.5], size=_WIDE.size).astype(np.float32)
    args = jnp.stack([jnp.asarray(_WIDE), jnp.asarray(b), jnp.asarray(b[::-1])])
    got = np.asarray(
        jax.jit(lambda a, o: _group_results(group, a, jnp.zeros(3, bool), (_WIDE.size,), o)[op])(args, jnp.int32(op))
    )
    function = FUNCTIONS[name]
    expected = np.asarray(function.fn(*(args[i] for i in range(function.arity))))
    keep = ~((np.abs(_WIDE) > 88.7) & (np.abs(_WIDE) < 89.4) & (name in ("cosh", "sinh")))
    keep &= ~(np.isinf(_WIDE) & (name == "power"))
    got, expected = got[keep], expected[keep]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=4e-5, atol=1e-37)


def test_the_unrolled_interpreter_equals_the_scan():
    """run_unrolled (registers as values) gives run_encoded's numbers on a population of mutated
    AdamW children that uses every slot group."""
    from lopt.meta_train.search import mutation

    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(12):
        program = seed("adamw_paper")
        for _ in range(int(rng.integers(1, 5))):
            program, _, graph, _ = mutation.mutate(program, rng, "all", 24)
        graphs.append(graph)
    encoded = jax.tree.map(jnp.asarray, encode_population(graphs, 12, 32))
    sizes = tuple(leaf.size for leaf in jax.tree.leaves(PARAMS))
    w, g, m, v = (
        jnp.broadcast_to(x, (12, sum(sizes)))
        for x in (_flat(PARAMS), _flat(gradient_sequence(1)[0]), 0.1 * _flat(PARAMS), 0.01 + 0.0 * _flat(PARAMS))
    )
    outputs = [
        jax.jit(jax.vmap(lambda p, w, g, m, v, f=f: f(p, w, g, m, v, 0.3, 2.0, sizes)))(encoded, w, g, m, v)
        for f in (run_encoded, run_unrolled)
    ]
    for a, b in zip(*outputs):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_the_schedule_respects_dependencies_and_slot_groups():
    """Every statement lands in a slot of its function's group, after the slots of its
    arguments; AdamW's nine arithmetic statements fit in two rounds; a chain of trigonometric
    statements takes one round each (one trig slot per round) and still runs correctly."""
    from lopt.programs.batched import GROUP_OF, ROUND, rounds_needed, schedule

    chain = parse("""
def train(w, g, m, v, lr):
  a = sin(g)
  b = cos(a)
  c = tan(b)
  d = arctan(c)
  update = lr * d
  return update, m, v
""")
    for graph in (check(seed("adamw_paper")), check(seed("lion_raw")), check(chain)):
        slots = schedule(graph)
        assert len(set(slots)) == len(slots)
        for i, (op, args) in enumerate(graph.nodes):
            assert ROUND[slots[i] % len(ROUND)] == GROUP_OF[op]
            for a in args:
                if isinstance(a, int) and a >= 6:
                    assert slots[a - 6] < slots[i]
    assert rounds_needed(check(seed("adamw_paper"))) == 2
    assert rounds_needed(check(chain)) == 5  # four trig rounds, then the final product
    grads = gradient_sequence(1)[0]
    expected, _ = to_optax(chain, 0.1).update(grads, to_optax(chain, 0.1).init(PARAMS), PARAMS)
    sizes = tuple(leaf.size for leaf in jax.tree.leaves(PARAMS))
    zeros = jnp.zeros(sum(sizes))
    update, _, _ = run_encoded(
        jax.tree.map(jnp.asarray, encode(check(chain))), _flat(PARAMS), _flat(grads), zeros, zeros, 0.1, 1.0, sizes
    )
    np.testing.assert_allclose(-np.asarray(update), np.asarray(_flat(expected)), rtol=2e-5, atol=1e-7)
    with pytest.raises(ValueError, match="needs 5 rounds"):
        encode(check(chain), 2)


def test_tree_level_functions_follow_their_definitions():
    program = parse("""
def train(w, g, m, v, lr):
  n = global_norm(g)
  c = cosine_sim(g, w)
  d = dot(g, w)
  per = norm(g)
  clipped = clip_by_global_norm(g, 0.5)
  a = per * c
  b = a + clipped
  f = d * n
  update = b + f
  return update, m, v
""")
    (update,) = run(to_optax(program), steps=1)
    g = gradient_sequence(1)[0]
    leaves_g, leaves_w = jax.tree.leaves(g), jax.tree.leaves(PARAMS)
    flat_g = np.concatenate([np.ravel(x) for x in leaves_g])
    flat_w = np.concatenate([np.ravel(x) for x in leaves_w])
    n, d = np.linalg.norm(flat_g), flat_g @ flat_w
    c = d / (n * np.linalg.norm(flat_w))
    for got, leaf in zip(jax.tree.leaves(update), leaves_g):
        leaf = np.asarray(leaf)
        expected = np.linalg.norm(leaf) * c + leaf * min(1.0, 0.5 / n) + d * n
        np.testing.assert_allclose(-np.asarray(got), expected, rtol=1e-5)


def test_dead_state_across_iterations_is_found_in_the_raw_lion_program():
    program = seed("lion_raw")
    assert live_outputs(to_graph(program)) == (True, False, True)  # m = cosh(update) is dead
    pruned = prune(to_graph(program))
    assert len(pruned.nodes) == len(program.statements) - 1
    assert pruned.outputs[1] == 2  # m stays its (zero) input
    assert redundant_fraction(program) == pytest.approx(1 / 12)


def test_structural_hash_ignores_names_order_dead_code_and_state_roles():
    base = seed("adamw_paper")
    renamed = parse(str(base).replace("sqrt_v", "root").replace("wd", "decay").replace("g2", "gg"))
    reordered = parse("""
def train(w, g, m, v, lr):
  wd = 0.01 * w
  g2 = square(g)
  v = interp(g2, v, 0.999)
  m = interp(g, m, 0.9)
  lr = lr * 0.001
  sqrt_v = sqrt(v)
  junk = exp(wd)
  update = m / sqrt_v
  update = wd + update
  update = lr * update
  return update, m, v
""")
    swapped = parse(
        str(base)
        .replace("m", "TMP")
        .replace("v", "m")
        .replace("TMP", "v")
        .replace("sqrt_m", "sqrt_v")
        .replace("return update, v, m", "return update, m, v")
        .replace("train(w, g, v, m, lr)", "train(w, g, m, v, lr)")
    )
    assert structural_hash(renamed) == structural_hash(base)
    assert structural_hash(reordered) == structural_hash(base)
    assert structural_hash(swapped) == structural_hash(base)
    different = parse(str(base).replace("0.999", "0.99"))
    assert structural_hash(different) != structural_hash(base)


def test_functional_hash_finds_sign_equal_to_m_over_its_magnitude():
    sign = parse(
        "def train(w, g, m, v, lr):\n m = interp(g, m, 0.9)\n d = sign(m)\n update = d * lr\n return update, m, v\n"
    )
    ratio = parse("""
def train(w, g, m, v, lr):
  m = interp(g, m, 0.9)
  m2 = m * m
  root = sqrt(m2)
  size = root + 1e-30
  d = m / size
  update = d * lr
  return update, m, v
""")
    other = parse("def train(w, g, m, v, lr):\n m = interp(g, m, 0.9)\n update = m * lr\n return update, m, v\n")
    assert structural_hash(sign) != structural_hash(ratio)
    (h1, ok1), (h2, ok2), (h3, _) = functional_hashes([check(sign), check(ratio), check(other)])
    assert ok1 and ok2 and h1 == h2 and h1 != h3


def test_the_probe_tells_adam_without_epsilon_from_adam_and_rejects_it():
    """Where a gradient is exactly zero from the start (a dead unit), m / sqrt(v) is 0/0; on the
    normal probes it rounds like m / (sqrt(v) + 1e-8), which a search's cache then lent it."""
    body = (
        "def train(w, g, m, v, lr):\n m = interp(g, m, 0.9)\n g2 = square(g)\n v = interp(g2, v, 0.999)\n"
        " r = sqrt(v)\n{}\n update = u * lr\n return update, m, v\n"
    )
    with_eps = parse(body.format(" d = r + 1e-08\n u = m / d"))
    without = parse(body.format(" u = m / r"))
    (h1, ok1), (h2, ok2) = functional_hashes([check(with_eps), check(without)])
    assert ok1 and not ok2 and h1 != h2


def test_functional_probe_flags_non_finite_programs():
    bad = parse("def train(w, g, m, v, lr):\n a = log(m)\n update = a * g\n return update, m, v\n")  # log|0| = -inf
    ((_, finite),) = functional_hashes([check(bad)])
    assert not finite


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty program"),
        ("def train(w, g, m, v):\n  return g, m, v\n", "inputs must be"),
        ("def train(w, g, m, v, lr):\n  a = b + g\n  return a, m, v\n", "line 2: variable 'b' is read before"),
        ("def train(w, g, m, v, lr):\n  a = sqr(g)\n  return a, m, v\n", "unknown function 'sqr'; did you mean sqrt"),
        ("def train(w, g, m, v, lr):\n  a = interp(g, m)\n  return a, m, v\n", "interp takes 3 argument"),
        ("def train(w, g, m, v, lr):\n  a = g + m + v\n  return a, m, v\n", "one operation per statement"),
        ("def train(w, g, m, v, lr):\n  a = g + m\n  return a, m\n", "exactly three"),
        ("def train(w, g, m, v, lr):\n  a = g $ m\n  return a, m, v\n", "unexpected character '$'"),
        ("def train(w, g, m, v, lr):\n  sqrt = abs(g)\n  return sqrt, m, v\n", "reserved"),
        ("def train(w, g, m, v, lr):\n  a = g\n  return a, m, v\n", "plain copies"),
        ("def train(w, g, m, v, lr):\n  a = __import__(g)\n  return a, m, v\n", "unknown function '__import__'"),
    ],
)
def test_parser_errors_name_the_problem_and_line(text, message):
    with pytest.raises(ProgramError, match=message.replace("(", r"\(").replace("$", r"\$")):
        parse(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("def train(w, g, m, v, lr):\n  a = w * lr\n  return a, m, v\n", "never depends on the gradient"),
        ("def train(w, g, m, v, lr):\n  a = lr * 2.0\n  b = a + g\n  return a, m, v\n", "scalar"),
        ("def train(w, g, m, v, lr):\n  a = clip_by_global_norm(g, w)\n  return a, m, v\n", "bound must be a scalar"),
    ],
)
def test_invalid_programs_are_rejected_before_training(text, message):
    with pytest.raises(ProgramError, match=message):
        check(parse(text))


def test_reading_the_step_needs_its_declaration():
    with pytest.raises(ProgramError, match="'t' is read before"):
        parse("def train(w, g, m, v, lr):\n  a = g * t\n  return a, m, v\n")
    program = parse("def train(w, g, m, v, lr, t):\n  a = g * t\n  return a, m, v\n")
    assert program.uses_step and parse(str(program)) == program


ARG_NAMES = ("w", "g", "m", "v", "lr")


@st.composite
def programs(draw):
    """Random valid-syntax programs (every read refers to an assigned name)."""
    defined = list(ARG_NAMES)
    statements = []
    for _ in range(draw(st.integers(1, 10))):
        op = draw(st.sampled_from(sorted(FUNCTIONS)))
        args = []
        for _ in range(FUNCTIONS[op].arity):
            if draw(st.booleans()):
                args.append(Var(draw(st.sampled_from(defined))))
            else:
                args.append(Const(draw(st.floats(-1e6, 1e6, allow_nan=False, width=32))))
        target = draw(st.sampled_from(defined[2:] + ["a", "b", "update"]))
        statements.append(Statement(target, op, tuple(args)))
        if target not in defined:
            defined.append(target)
    returns = tuple(draw(st.sampled_from(defined)) for _ in range(3))
    return Program(tuple(statements), returns)


@settings(max_examples=150, deadline=None)
@given(programs())
def test_parse_of_format_is_the_identity(program):
    assert parse(format_program(program)) == program


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parser_fuzz_random_text_gives_only_program_errors(text):
    try:
        parse(text)
    except ProgramError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_parser_fuzz_mutated_seed_text_gives_only_program_errors(data):
    text = str(seed(data.draw(st.sampled_from(["adamw", "lion", "adamw_paper"]))))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(st.text(min_size=1, max_size=6))
        if action == "insert":
            text = text[:position] + piece + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + len(piece) :]
        else:
            text = text[:position] + piece + text[position + len(piece) :]
    try:
        program = parse(text)
        check(program)
    except ProgramError:
        pass


def test_found_program_saves_and_loads_as_an_optimizer(tmp_path):
    meta_optimizer = from_program(seed("lion"), learning_rate=3e-3)
    theta = meta_optimizer.init_meta(jax.random.key(0))
    path = lopt.save(tmp_path / "lion", meta_optimizer, theta)
    loaded = lopt.load(path)
    for a, b in zip(run(loaded, 4), run(optax.lion(3e-3, weight_decay=1e-3), 4)):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-8), a, b)
    manifest = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(manifest.replace("sign(c)", "sign(c) +"))
    with pytest.raises(lopt.CheckpointError, match="line"):
        lopt.load(path)


def test_a_program_checkpoint_stores_each_number_once(tmp_path):
    """save_program keeps the constants in the text and the lr in theta; with tune_constants
    theta holds the constants and they override the text's; a checkpoint written before
    tune_constants existed (constants in theta, no such config key) still loads."""
    import json

    from lopt.programs.optimizer import save_program

    path = save_program(tmp_path / "p", seed("lion"), 3e-3, {"source": "test"})
    manifest = json.loads((path / "manifest.json").read_text())
    assert [a["path"] for a in manifest["arrays"]] == ["learning_rate"]
    for a, b in zip(run(lopt.load(path), 4), run(optax.lion(3e-3, weight_decay=1e-3), 4)):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-8), a, b)

    tuned = ProgramOptimizer(from_program(seed("lion")).text, 3e-3, tune_constants=True)
    theta = tuned.init_meta(jax.random.key(0))
    np.testing.assert_allclose(theta["constants"], constants_of(check(seed("lion"))))
    weight_decay = list(theta["constants"]).index(np.float32(1e-3))
    theta["constants"] = theta["constants"].at[weight_decay].set(0.0)
    legacy = lopt.save(tmp_path / "legacy", tuned, theta)
    record = json.loads((legacy / "manifest.json").read_text())
    del record["config"]["tune_constants"]
    (legacy / "manifest.json").write_text(json.dumps(record))
    for a, b in zip(run(lopt.load(legacy), 4), run(optax.lion(3e-3, weight_decay=0.0), 4)):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-8), a, b)


def test_only_live_states_take_memory():
    """Lion keeps one state (half of AdamW's memory, as in the paper); signSGD keeps none."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    leaves = lambda name: [len(jax.tree.leaves(x)) for x in to_optax(seed(name), 1e-3).init(params)[1:]]  # noqa: E731
    assert leaves("adamw") == [2, 2] and leaves("lion") == [2, 0] and leaves("signsgd") == [0, 0]


def test_motifs_name_the_ideas_in_known_programs():
    """Lion's sign of an interpolated momentum, AdamW's second-moment normalisation, clipping,
    and invariance to renaming and dead code (lopt.programs.motifs)."""
    from lopt.programs.motifs import motifs

    assert motifs(check(seed("lion"))) == ["momentum", "sign of an interpolated momentum", "decoupled weight decay"]
    assert motifs(check(seed("adamw_paper_eps"))) == [
        "momentum",
        "second moment",
        "adaptive normalisation",
        "decoupled weight decay",
    ]
    assert motifs(check(seed("sgd_momentum"))) == ["momentum"]
    assert motifs(check(seed("signsgd"))) == ["sign descent"]
    clipped = parse("""
def train(w, g, m, v, lr):
  junk = exp(w)
  m = interp(g, m, 0.9)
  c = clip(m, 0.5)
  update = c * lr
  return update, m, v
""")
    assert motifs(check(clipped)) == ["momentum", "update clipping"]
    renamed = parse(str(seed("lion")).replace("direction", "d").replace("wd", "decay"))
    assert motifs(check(renamed)) == motifs(check(seed("lion")))
    # A momentum that never reaches the update and a state nobody reads are no motif.
    stateless = parse("""
def train(w, g, m, v, lr):
  update = g * lr
  m = interp(g, m, 0.9)
  return update, m, v
""")
    assert motifs(check(stateless)) == []


def test_probe_rounding_equals_decimal_formatting():
    """The functional hash's rounding to 4 significant digits, vectorised, against Python's
    decimal formatting (the earlier per-value implementation) over 1e-20..1e20, signs, zeros,
    values that round up a decade, and non-finite values (NaN)."""
    from lopt.programs.functional import _round

    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(size=5000) * 10.0 ** rng.integers(-20, 20, 5000), [0.0, -0.0, 9.9996, -0.00099996, 1.0, 123456.0]]
    ).astype(np.float32)
    want = np.array([float(f"{v:.3e}") for v in x])
    np.testing.assert_array_equal(_round(x), want)
    np.testing.assert_array_equal(np.isnan(_round(np.array([np.inf, -np.inf, np.nan, 1.0]))), [True, True, True, False])

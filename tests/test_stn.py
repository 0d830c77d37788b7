"""Self-Tuning Networks (lopt.hypergrad.stn): the structured best-response layer and the training
objective against hand-written references, the hyperparameter axes, the direction the hyper steps
move on a problem whose answer is known, and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.hypergrad import stn


def test_layer_is_the_papers_structured_best_response():
    """z = x W + b + (x U) ⊙ (h H) (MacKay et al. 2019, Eq. 12-14), checked in numpy."""
    layers = stn.init_mlp(jax.random.key(0), (5, 7, 3), num_hyper=2)
    layers = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape), layers)
    x = np.asarray(jax.random.normal(jax.random.key(2), (4, 5)))
    h = np.asarray(jax.random.normal(jax.random.key(3), (4, 2)))
    ref = x
    for i, layer in enumerate(jax.tree.map(np.asarray, layers)):
        ref = ref @ layer["w"] + layer["b"] + (ref @ layer["u"]) * (h @ layer["h"])
        if i == 0:
            ref = np.maximum(ref, 0.0)
    np.testing.assert_allclose(stn.apply_mlp(layers, jnp.asarray(x), jnp.asarray(h)), ref, rtol=1e-5, atol=1e-5)


def test_zero_gates_make_an_ordinary_mlp():
    layers = stn.init_mlp(jax.random.key(0), (5, 7, 3), num_hyper=3)
    plain = [{"w": layer["w"], "b": layer["b"]} for layer in layers]
    x = jax.random.normal(jax.random.key(2), (4, 5))
    h = jax.random.normal(jax.random.key(3), (4, 3))
    np.testing.assert_allclose(stn.apply_mlp(layers, x, h), stn.apply_mlp(plain, x), rtol=1e-6)


def test_label_smoothing_matches_optax():
    logits = jax.random.normal(jax.random.key(0), (6, 10))
    labels = jnp.arange(6) % 10
    for s in (0.0, 0.1, 0.3):
        ref = optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, 10), s))
        np.testing.assert_allclose(stn.smoothed_cross_entropy(logits, labels, jnp.full(6, s)), ref, rtol=1e-5)


@pytest.mark.parametrize("name,value", [("weight_decay", 3e-4), ("dropout", 0.4), ("label_smoothing", 0.1)])
def test_unconstrained_axis_round_trips(name, value):
    u = stn.to_unconstrained(name, value)
    assert float(stn.from_unconstrained(name, jnp.float32(u))) == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize(
    "start,message",
    [
        ((("dropuot", 0.1),), "unknown hyperparameter 'dropuot'"),
        ((("dropout", 0.97),), "dropout must lie strictly between 0 and 0.95"),
        ((("weight_decay", 0.0),), "weight_decay must be > 0"),
        ((("dropout", 0.1), ("dropout", 0.2)), "each hyperparameter once"),
    ],
)
def test_bad_settings_are_one_line_errors(start, message):
    with pytest.raises(stn.HyperError, match=message):
        stn.STNConfig(start=start)


def test_train_fixed_rejects_unknown_names():
    data = (jnp.ones((8, 3)), jnp.zeros(8, jnp.int32))
    with pytest.raises(stn.HyperError, match="unknown hyperparameters \\['l2'\\]"):
        stn.train_fixed({"l2": 0.1}, data, 2, jax.random.key(0), steps=2)


def _random_labels(seed, n=64, d=10, classes=4):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (n, d)), jax.random.randint(k2, (n,), 0, classes)


def test_hyper_steps_regularise_when_labels_are_noise():
    """Training and validation labels drawn independently of the inputs: the validation loss is
    lowest at the uniform prediction, so every hyperparameter that pulls towards it (more decay,
    more dropout, more smoothing) must grow from a small start."""
    config = stn.STNConfig(
        hidden=(32,),
        start=(("weight_decay", 1e-4), ("dropout", 0.05), ("label_smoothing", 0.02)),
        steps=600,
        batch_size=32,
        learning_rate=3e-3,
        hyper_learning_rate=3e-2,
        sigma=0.5,
    )
    result = stn.run(config, _random_labels(0), _random_labels(1), 4, jax.random.key(0))
    for name, value in config.start:
        assert result.hyperparameters[name] > 2 * value, (name, result.hyperparameters)
    assert all(len(t) == config.steps // config.train_per_hyper for t in result.trajectory.values())
    # the same inputs with labels that follow them (a learnable rule): smoothing stays small
    (x, _), (xv, _) = _random_labels(0), _random_labels(1)
    clean = stn.run(
        config, (x, (x[:, 0] > 0).astype(jnp.int32)), (xv, (xv[:, 0] > 0).astype(jnp.int32)), 4, jax.random.key(0)
    )
    assert clean.hyperparameters["label_smoothing"] < result.hyperparameters["label_smoothing"] / 5


def test_non_finite_run_is_refused():
    x, y = _random_labels(0)
    config = stn.STNConfig(hidden=(8,), steps=4, batch_size=8)
    with pytest.raises(stn.HyperError, match="non-finite"):
        stn.run(config, (x.at[:, 0].set(jnp.nan), y), (x, y), 4, jax.random.key(0))


def test_the_fixed_phase_holds_the_hyperparameters_and_trains_at_them():
    """With fixed_fraction, the last part of the run takes no hyper step (λ stays put after moving
    before it), and the run's weights differ from those of the run without the fixed phase."""
    x, y = _random_labels(0)
    base = dict(hidden=(16,), steps=80, batch_size=16, hyper_learning_rate=3e-2, hyper_schedule="cosine")
    result = stn.run(stn.STNConfig(**base, fixed_fraction=0.25), (x, y), _random_labels(1), 4, jax.random.key(0))
    for values in result.trajectory.values():
        assert len(values) == 40 and np.all(values[-10:] == values[-10])  # 10 of 40 rounds fixed
        assert values[-11] != values[0]  # the hyper steps before moved it
    plain = stn.run(stn.STNConfig(**base), (x, y), _random_labels(1), 4, jax.random.key(0))
    assert stn.evaluate(result, x, y, ("weight_decay", "dropout", "label_smoothing")) != stn.evaluate(
        plain, x, y, ("weight_decay", "dropout", "label_smoothing")
    )
    with pytest.raises(stn.HyperError, match="fixed_fraction must lie in"):
        stn.STNConfig(fixed_fraction=1.0)
    with pytest.raises(stn.HyperError, match="hyper_schedule must be"):
        stn.STNConfig(hyper_schedule="linear")


def test_the_warmup_hyper_schedule_starts_still_and_then_moves():
    """hyper_schedule='warmup': the hyper step size rises from 0 over the first half of the hyper
    steps, so the first hyper step leaves λ where it started, the early steps move it less than a
    constant schedule does, and it still moves."""
    x, y = _random_labels(0)
    base = dict(hidden=(16,), steps=80, batch_size=16, hyper_learning_rate=3e-2)
    warm = stn.run(stn.STNConfig(**base, hyper_schedule="warmup"), (x, y), _random_labels(1), 4, jax.random.key(0))
    flat = stn.run(stn.STNConfig(**base), (x, y), _random_labels(1), 4, jax.random.key(0))
    for name, start in stn.STNConfig().start:
        values, constant = np.asarray(warm.trajectory[name]), np.asarray(flat.trajectory[name])
        np.testing.assert_allclose(values[0], start, rtol=1e-6)
        assert abs(values[5] - start) < abs(constant[5] - start)
        assert abs(values[-1] - start) > 1e-3 * start


def test_keeping_the_best_checkpoint_scores_only_checkpoints():
    """The chunked scan keeps the lowest score among the carries after every `every` steps and
    after the last, not after every step; checked against the running sums by hand."""
    xs = jnp.array([3.0, -1.0, 2.0, -5.0, 4.0, 1.0, 1.0])  # running sums 3 2 4 -1 3 4 5

    def body(c, x):
        return c + x, c + x

    carry, ys, (best, score) = stn._scan_keeping_best(body, jnp.float32(0), xs, 2, lambda c: c)
    np.testing.assert_allclose(ys, np.cumsum(np.asarray(xs)))
    assert float(carry) == 5.0 and float(best) == -1.0 and float(score) == -1.0
    # every = 3: checkpoints after steps 3 and 6 and the last (7): sums 4, 4, 5
    _, _, (best, _) = stn._scan_keeping_best(body, jnp.float32(0), xs, 3, lambda c: c)
    assert float(best) == 4.0
    # a NaN score never counts as lower
    _, _, (best, _) = stn._scan_keeping_best(body, jnp.float32(0), xs, 2, lambda c: jnp.where(c < 0, jnp.nan, c))
    assert float(best) == 2.0
    carry, ys, best = stn._scan_keeping_best(body, jnp.float32(0), xs, 0, lambda c: c)
    assert best is None and float(carry) == 5.0
    # no step at all (a phase of zero length): the carry and the best so far pass through
    carry, ys, kept = stn._scan_keeping_best(body, jnp.float32(1), xs[:0], 2, lambda c: c, (jnp.float32(7), 7.0))
    assert float(carry) == 1.0 and ys.shape == (0,) and float(kept[0]) == 7.0


def test_early_stopping_returns_a_checkpoint_no_worse_on_validation():
    """On labels that are pure noise a long run overfits; the best-validation checkpoint of
    `train_fixed` and of an STN run scores at most what the run's last weights score, and a
    checkpoint only at the last step is the last weights exactly."""
    x, y = _random_labels(0)
    val = _random_labels(1)
    kw = dict(hidden=(32,), steps=200, batch_size=16)
    last = stn.train_fixed({"dropout": 0.0}, (x, y), 4, jax.random.key(0), **kw)
    best = stn.train_fixed({"dropout": 0.0}, (x, y), 4, jax.random.key(0), **kw, validation=val, checkpoint_every=20)
    assert float(stn.validation_loss(best, *val)) < float(stn.validation_loss(last, *val))
    same = stn.train_fixed({"dropout": 0.0}, (x, y), 4, jax.random.key(0), **kw, validation=val, checkpoint_every=200)
    chex.assert_trees_all_close(same, last)
    names = ("weight_decay", "dropout", "label_smoothing")
    config = dict(hidden=(32,), steps=200, batch_size=16, hyper_learning_rate=1e-2)
    plain = stn.run(stn.STNConfig(**config), (x, y), val, 4, jax.random.key(0))
    early = stn.run(stn.STNConfig(**config, checkpoint_every=20), (x, y), val, 4, jax.random.key(0))
    assert stn.evaluate(early, *val, names) <= stn.evaluate(plain, *val, names)
    # the λ returned is the one of a checkpoint: a row of the trajectory at a multiple of 10 rounds
    rows = np.stack([early.trajectory[n] for n in names], 1)[9::10]
    assert np.any(np.all(np.isclose(rows, [early.hyperparameters[n] for n in names], rtol=1e-5), axis=1))
    with pytest.raises(stn.HyperError, match="needs a validation set"):
        stn.train_fixed({"dropout": 0.0}, (x, y), 4, jax.random.key(0), **kw, checkpoint_every=20)
    with pytest.raises(stn.HyperError, match="checkpoint_every must be >= 0"):
        stn.STNConfig(steps=100, checkpoint_every=-1)
    # a checkpoint interval past the run's length keeps the last weights
    longer = stn.train_fixed(
        {"dropout": 0.0}, (x, y), 4, jax.random.key(0), **kw, validation=val, checkpoint_every=10**6
    )
    chex.assert_trees_all_close(longer, last)

"""Tasks, families and inner training."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import tasks
from lopt.tasks import train


@pytest.mark.parametrize("family_name", sorted(tasks.FAMILIES))
def test_sampled_tasks_train_to_lower_loss_with_adam(family_name):
    family = tasks.get_family(family_name)
    for index in range(2):
        spec = family.sample(jax.random.key(index))
        hash(spec)  # specs are frozen and hashable
        task = family.build(spec)
        result = jax.jit(lambda t: train(t, optax.adam(1e-2), jax.random.key(1), num_steps=150))(task)
        start, end = float(result.train_loss[:10].mean()), float(result.train_loss[-10:].mean())
        assert np.isfinite(end), spec
        assert end < 0.9 * start, (spec, start, end)


def test_family_sampling_is_deterministic_and_varied():
    family = tasks.get_family("mlp")
    specs = [family.sample(jax.random.key(i)) for i in range(12)]
    assert specs[3] == family.sample(jax.random.key(3))
    assert len(set(specs)) > 4


@pytest.mark.parametrize("name", ["digits-mlp-relu32", "pytext-transformer-32x1", "quadratic-10-cond100"])
def test_same_key_same_batch(name):
    task = tasks.get_task(name)
    a, b = task.batch(jax.random.key(7)), task.batch(jax.random.key(7))
    c = task.batch(jax.random.key(8))
    chex.assert_trees_all_equal(a, b)
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_language_model_targets_are_inputs_shifted():
    task = tasks.get_task("pytext-transformer-32x1")
    batch = task.batch(jax.random.key(0))
    chex.assert_shape(batch["inputs"], (16, 32))
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_same_key_same_curve_and_eval_schedule():
    task = tasks.get_task("digits-mlp-relu32")
    run = jax.jit(lambda k: train(task, optax.sgd(0.1), k, num_steps=40, eval_every=10))
    first, second = run(jax.random.key(3)), run(jax.random.key(3))
    chex.assert_trees_all_equal(first, second)
    chex.assert_shape(first.train_loss, (40,))
    chex.assert_shape(first.eval_loss, (5,))


def test_vmap_over_seeds_equals_separate_runs():
    task = tasks.get_task("digits-mlp-relu32")
    keys = jax.random.split(jax.random.key(0), 4)
    run = lambda k: train(task, optax.adam(1e-2), k, num_steps=30, eval_every=10)
    batched = jax.jit(jax.vmap(run))(keys)
    for i in range(4):
        single = jax.jit(run)(keys[i])
        np.testing.assert_allclose(batched.train_loss[i], single.train_loss, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(batched.eval_loss[i], single.eval_loss, rtol=2e-5, atol=1e-6)


def test_train_matches_a_hand_written_sgd_loop():
    """Independent reference: plain Python SGD on the quadratic with the same keys."""
    task = tasks.get_task("quadratic-10-cond100")
    key = jax.random.key(5)
    result = train(task, optax.sgd(0.005), key, num_steps=5)
    init_key, data_key, _ = jax.random.split(key, 3)
    x = task.init(init_key)["x"]
    h = task.curvatures
    for t, step_key in enumerate(jax.random.split(data_key, 5)):
        target = task.batch(step_key)
        np.testing.assert_allclose(result.train_loss[t], 0.5 * jnp.sum(h * (x - target) ** 2), rtol=1e-5)
        x = x - 0.005 * h * (x - target)
    np.testing.assert_allclose(result.params["x"], x, rtol=1e-5)


def test_extra_args_reach_the_optimizer():
    seen = {}

    def update(updates, state, params=None, **extra):
        seen.update({k: type(v).__name__ for k, v in extra.items()})
        return updates, state

    probe = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    train(tasks.get_task("rosenbrock-2"), optax.chain(probe, optax.sgd(1e-3)), jax.random.key(0), num_steps=2)
    assert set(seen) == {"loss", "obj_fn", "microbatch_grads_fn", "sampled_obj_fn"}
    assert seen["sampled_obj_fn"] == "NoneType"  # Rosenbrock's loss is not a likelihood over labels
    train(tasks.get_task("digits-mlp-relu32"), optax.chain(probe, optax.sgd(1e-3)), jax.random.key(0), num_steps=2)
    assert seen["sampled_obj_fn"] == "function" and seen["microbatch_grads_fn"] == "function"


def test_bad_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid tasks: .*digits-mlp-relu32"):
        tasks.get_task("digits-mlp-relu33")
    with pytest.raises(ValueError, match="valid families: conv, mlp"):
        tasks.get_family("resnet")
    with pytest.raises(ValueError, match="valid: elu, gelu"):
        tasks.build(tasks.MLPSpec(activation="swish"))
    with pytest.raises(ValueError, match="valid datasets"):
        tasks.build(tasks.MLPSpec(dataset="imagenet"))
    with pytest.raises(ValueError, match="must divide"):
        train(tasks.get_task("rosenbrock-2"), optax.sgd(1e-3), jax.random.key(0), num_steps=10, eval_every=3)


def test_cross_entropy_survives_huge_uniform_logit_shifts():
    """All logits equal at -2.2e14 is a uniform prediction: loss log(10), not 0."""
    from lopt.tasks.tasks import softmax_cross_entropy

    loss = softmax_cross_entropy(jnp.full((3, 10), -2.2e14), jnp.array([0, 4, 9]))
    np.testing.assert_allclose(loss, np.log(10.0), rtol=1e-6)
    logits = jnp.array([[2.0, -1.0, 0.5]])
    expected = -np.log(np.exp(2.0) / np.exp([2.0, -1.0, 0.5]).sum())
    np.testing.assert_allclose(softmax_cross_entropy(logits, jnp.array([0])), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding",
    [
        ((3, 40, 2), (3, 2, 5), (2,), "SAME"),  # the conv nets' layer: 1-D, stride 2
        ((2, 9, 11, 3), (3, 3, 3, 4), (2, 2), "SAME"),  # 2-D, odd sizes (uneven SAME padding)
        ((2, 10, 3), (4, 3, 5), (3,), "VALID"),
        ((2, 8, 8, 2), (3, 3, 2, 4), (1, 1), ((1, 1), (0, 2))),
    ],
)
def test_patch_conv_equals_lax_convolution_values_and_gradients(x_shape, w_shape, strides, padding):
    """im2col convolution (`tasks.models.patch_conv`) against XLA's convolution: outputs and both
    gradients, plain and with a kernel per member under vmap (the search's and PES's case)."""
    from jax import lax

    from lopt.tasks.models import patch_conv

    spec = ("NWC", "WIO", "NWC") if len(x_shape) == 3 else ("NHWC", "HWIO", "NHWC")
    dn = lax.conv_dimension_numbers(x_shape, w_shape, spec)
    x = jax.random.normal(jax.random.key(0), x_shape)
    ws = jax.random.normal(jax.random.key(1), (3, *w_shape))

    def loss(conv, x, w):
        return jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn, precision="highest")))

    want = lax.conv_general_dilated(x, ws[0], strides, padding, dimension_numbers=dn, precision="highest")
    np.testing.assert_allclose(
        patch_conv(x, ws[0], strides, padding, dimension_numbers=dn, precision="highest"), want, atol=1e-5
    )
    for argnums in (0, 1):
        grad = lambda conv: jax.vmap(jax.grad(functools.partial(loss, conv), argnums), (None, 0))(x, ws)  # noqa: E731
        np.testing.assert_allclose(grad(patch_conv), grad(lax.conv_general_dilated), atol=1e-4, rtol=1e-4)


def test_patch_conv_hands_dilated_and_grouped_convolutions_to_lax():
    from jax import lax

    from lopt.tasks.models import patch_conv

    x = jax.random.normal(jax.random.key(0), (2, 12, 4))
    dn = lax.conv_dimension_numbers(x.shape, (3, 2, 6), ("NWC", "WIO", "NWC"))
    for kwargs, w_shape in [({"rhs_dilation": (2,)}, (3, 4, 6)), ({"feature_group_count": 2}, (3, 2, 6))]:
        w = jax.random.normal(jax.random.key(1), w_shape)
        np.testing.assert_allclose(
            patch_conv(x, w, (1,), "SAME", dimension_numbers=dn, **kwargs),
            lax.conv_general_dilated(x, w, (1,), "SAME", dimension_numbers=dn, **kwargs),
            atol=1e-5,
        )

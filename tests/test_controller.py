"""The meta-learned LR controller (lopt.learned.controller): untrained it is its base optimizer,
its meta-gradient reaches every layer, and it survives lopt.save/load."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import tasks
from lopt.learned import LRController


def test_unknown_base_optimizer_is_named():
    with pytest.raises(ValueError, match="unknown optimizer"):
        LRController(base="adamm")


@pytest.fixture(scope="module")
def small_task():
    return tasks.build(tasks.MLPSpec("digits", (8,), "tanh", 32))


def test_untrained_controller_is_its_base_optimizer(small_task):
    controller = LRController(base_learning_rate=3e-3, hidden_sizes=(8, 8))
    theta = controller.init_meta(jax.random.key(0))
    key = jax.random.key(1)
    ours = tasks.train(small_task, controller.transform(theta, num_steps=20), key, num_steps=20)
    reference = tasks.train(small_task, optax.adam(3e-3), key, num_steps=20)
    np.testing.assert_allclose(ours.train_loss, reference.train_loss, rtol=1e-5)


def test_controller_meta_gradient_reaches_every_layer_and_vmaps(small_task):
    controller = LRController(hidden_sizes=(8, 8))
    theta = controller.init_meta(jax.random.key(0))
    theta = jax.tree.map(lambda x: x + 0.01, theta)  # move off the zero output layer

    def meta_loss(theta, key):
        return (
            tasks.train(small_task, controller.transform(theta, num_steps=30), key, num_steps=30).train_loss[-5:].mean()
        )

    grads = jax.jit(jax.grad(meta_loss))(theta, jax.random.key(2))
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)) and np.any(leaf != 0)
    losses = jax.jit(jax.vmap(meta_loss, in_axes=(None, 0)))(theta, jax.random.split(jax.random.key(3), 3))
    chex.assert_shape(losses, (3,))


def test_controller_round_trips_through_lopt_save_and_load(tmp_path, small_task):
    controller = LRController(hidden_sizes=(8,))
    theta = jax.tree.map(lambda x: x + 0.05, controller.init_meta(jax.random.key(0)))
    path = lopt.save(tmp_path / "controller", controller, theta, num_steps=40)
    loaded = lopt.load(path)
    key = jax.random.key(4)
    a = tasks.train(small_task, controller.transform(theta, num_steps=40), key, num_steps=40).train_loss
    b = tasks.train(small_task, loaded, key, num_steps=40).train_loss
    np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="loss=loss"):
        params = small_task.init(jax.random.key(0))
        loaded.update(jax.tree.map(jnp.zeros_like, params), loaded.init(params), params)

"""On-device datasets and in-`jit` minibatch sampling.

A dataset is a frozen dataclass registered as a pytree: arrays are leaves (they live on the device
and are passed into jitted code as buffers), sizes and names are static. Minibatches are drawn
inside `jit` from a key with `jax.random`, so a whole inner training run is one `lax.scan` and a
population of runs is one `vmap`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks.base import check_split


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """Inputs `x` (float32, any trailing shape) and integer labels `y` for a train and test split."""

    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    name: str = dataclasses.field(metadata=dict(static=True))
    num_classes: int = dataclasses.field(metadata=dict(static=True))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def sample(self, key: jax.Array, batch_size: int, split: str = "train") -> dict[str, jax.Array]:
        """Draw `batch_size` examples uniformly with replacement from `split`."""
        check_split(split)
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        index = jax.random.randint(key, (batch_size,), 0, x.shape[0])
        return {"x": x[index], "y": y[index]}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TextData:
    """A token stream (int32) per split; batches are random windows of `sequence_length + 1`."""

    train_tokens: jax.Array
    test_tokens: jax.Array
    name: str = dataclasses.field(metadata=dict(static=True))
    vocab_size: int = dataclasses.field(metadata=dict(static=True))

    def sample(
        self, key: jax.Array, batch_size: int, sequence_length: int, split: str = "train"
    ) -> dict[str, jax.Array]:
        """Random windows: `inputs` are tokens [i, i+L), `targets` tokens [i+1, i+L+1)."""
        check_split(split)
        tokens = self.train_tokens if split == "train" else self.test_tokens
        if tokens.shape[0] <= sequence_length + 1:
            raise ValueError(
                f"{self.name}/{split} has {tokens.shape[0]} tokens, too few for windows of {sequence_length + 1}"
            )
        starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - sequence_length - 1)
        offsets = jnp.arange(sequence_length + 1)
        windows = tokens[starts[:, None] + offsets[None, :]]
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def split_arrays(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A deterministic shuffled train/test split of numpy arrays."""
    order = np.random.default_rng(seed).permutation(len(x))
    num_test = int(round(len(x) * test_fraction))
    test, train = order[:num_test], order[num_test:]
    return x[train], y[train], x[test], y[test]


def standardize(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale inputs to zero mean and unit variance using train-split statistics only."""
    mean = train_x.mean()
    std = train_x.std() + 1e-8
    return ((train_x - mean) / std).astype(np.float32), ((test_x - mean) / std).astype(np.float32)

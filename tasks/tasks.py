"""Concrete tasks: classifiers (MLP, conv net), a char-level LM, and cheap synthetic problems.

Every task is a frozen dataclass pytree (data arrays are leaves, the spec is static), so a
jitted inner-training function takes the task as an ordinary argument.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks.base import TaskSpec, check_split
from lopt.tasks.datasets import ClassificationData, TextData, load
from lopt.tasks.models import MLP, ConvNet, TransformerLM, activation


@dataclasses.dataclass(frozen=True)
class MLPSpec(TaskSpec):
    """An MLP classifier on an image or signal dataset."""

    kind: ClassVar[str] = "mlp"
    dataset: str = "digits"
    hidden_sizes: tuple[int, ...] = (32,)
    activation: str = "relu"
    batch_size: int = 128
    loss: str = "cross_entropy"


@dataclasses.dataclass(frozen=True)
class ConvSpec(TaskSpec):
    """A strided conv net classifier (2-D for images, 1-D for signals)."""

    kind: ClassVar[str] = "conv"
    dataset: str = "digits"
    channels: tuple[int, ...] = (16, 32)
    activation: str = "relu"
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class TransformerSpec(TaskSpec):
    """A char-level decoder-only transformer language model."""

    kind: ClassVar[str] = "transformer"
    dataset: str = "pytext"
    model_dim: int = 32
    num_layers: int = 1
    num_heads: int = 2
    sequence_length: int = 32
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class RegressionSpec(TaskSpec):
    """Teacher–student regression: a student MLP fits y = teacher(x) + noise by mean squared
    error, x ~ N(0, I) of `input_dim` dimensions, the teacher a fixed random tanh MLP (hidden
    `teacher_sizes`, `outputs` outputs) drawn from `seed`. Data is unlimited (drawn per batch)."""

    kind: ClassVar[str] = "regression"
    input_dim: int = 16
    outputs: int = 4
    teacher_sizes: tuple[int, ...] = (64,)
    hidden_sizes: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    noise_scale: float = 0.1
    batch_size: int = 128
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class QuadraticSpec(TaskSpec):
    """Noisy quadratic 0.5 Σ h_i (x_i − ξ_i)², ξ ~ N(0, noise²), h log-spaced over a condition number."""

    kind: ClassVar[str] = "quadratic"
    dim: int = 10
    condition_number: float = 100.0
    noise_scale: float = 0.1
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class RosenbrockSpec(TaskSpec):
    """Chained Rosenbrock Σ 100(x_{i+1} − x_i²)² + (1 − x_i)², evaluated at x + ξ, ξ ~ N(0, noise²)."""

    kind: ClassVar[str] = "rosenbrock"
    dim: int = 2
    noise_scale: float = 0.01


CLASSIFICATION_LOSSES = ("cross_entropy", "squared_error")


def squared_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over examples of the squared error between the outputs and one-hot labels, summed
    over classes (the square loss for classification, Hui & Belkin 2021)."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return jnp.sum(jnp.square(logits.astype(jnp.float32) - targets), axis=-1).mean()


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels, through `jax.nn.log_softmax` (which
    subtracts the max logit first). optax.softmax_cross_entropy_with_integer_labels computes
    logsumexp(x) − x_y, which returns exactly 0 when every logit is shifted by ~1e14 (float32
    absorbs the log-sum); program search found and exploited that."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1).mean()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Softmax cross-entropy of an MLP or conv net on a `ClassificationData`."""

    data: ClassificationData
    spec: MLPSpec | ConvSpec = dataclasses.field(metadata=dict(static=True))

    @property
    def model(self) -> MLP | ConvNet:
        if isinstance(self.spec, MLPSpec):
            return MLP(self.spec.hidden_sizes, self.data.num_classes, self.spec.activation)
        return ConvNet(self.spec.channels, self.data.num_classes, self.spec.activation)

    def init(self, key: jax.Array) -> dict:
        dummy = jnp.zeros((1, *self.data.input_shape), jnp.float32)
        return self.model.init(key, dummy)["params"]

    def loss(self, params: dict, batch: dict) -> jax.Array:
        logits = self.model.apply({"params": params}, batch["x"])
        if getattr(self.spec, "loss", "cross_entropy") == "squared_error":
            return squared_error(logits, batch["y"])
        return softmax_cross_entropy(logits, batch["y"])

    def batch(self, key: jax.Array, split: str = "train") -> dict:
        return self.data.sample(key, self.spec.batch_size, split)

    def sampled_label_loss(self, params: dict, batch: dict, key: jax.Array) -> jax.Array:
        """The loss against labels drawn from the model's own predictive distribution (the
        Gauss-Newton-Bartlett estimator's objective, Liu et al. 2023, Algorithm 2)."""
        logits = self.model.apply({"params": params}, batch["x"])
        sampled = jax.random.categorical(key, jax.lax.stop_gradient(logits))
        return softmax_cross_entropy(logits, sampled)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LanguageModelTask:
    """Next-token cross-entropy of a `TransformerLM` on a `TextData` stream."""

    data: TextData
    spec: TransformerSpec = dataclasses.field(metadata=dict(static=True))

    @property
    def model(self) -> TransformerLM:
        s = self.spec
        return TransformerLM(self.data.vocab_size, s.model_dim, s.num_layers, s.num_heads, s.sequence_length)

    def init(self, key: jax.Array) -> dict:
        dummy = jnp.zeros((1, self.spec.sequence_length), jnp.int32)
        return self.model.init(key, dummy)["params"]

    def loss(self, params: dict, batch: dict) -> jax.Array:
        logits = self.model.apply({"params": params}, batch["inputs"])
        return softmax_cross_entropy(logits, batch["targets"])

    def batch(self, key: jax.Array, split: str = "train") -> dict:
        return self.data.sample(key, self.spec.batch_size, self.spec.sequence_length, split)

    def sampled_label_loss(self, params: dict, batch: dict, key: jax.Array) -> jax.Array:
        """The loss against next tokens drawn from the model's own predictions (see
        `ClassificationTask.sampled_label_loss`)."""
        logits = self.model.apply({"params": params}, batch["inputs"])
        sampled = jax.random.categorical(key, jax.lax.stop_gradient(logits))
        return softmax_cross_entropy(logits, sampled)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RegressionTask:
    """See `RegressionSpec`. The teacher's weights are leaves (device data), the spec static."""

    teacher: dict
    spec: RegressionSpec = dataclasses.field(metadata=dict(static=True))

    @property
    def model(self) -> MLP:
        return MLP(self.spec.hidden_sizes, self.spec.outputs, self.spec.activation)

    def init(self, key: jax.Array) -> dict:
        return self.model.init(key, jnp.zeros((1, self.spec.input_dim), jnp.float32))["params"]

    def loss(self, params: dict, batch: dict) -> jax.Array:
        predictions = self.model.apply({"params": params}, batch["x"])
        return jnp.sum(jnp.square(predictions - batch["y"]), axis=-1).mean()

    def batch(self, key: jax.Array, split: str = "train") -> dict:
        check_split(split)
        key = jax.random.fold_in(key, 0 if split == "train" else 1)
        input_key, noise_key = jax.random.split(key)
        x = jax.random.normal(input_key, (self.spec.batch_size, self.spec.input_dim), jnp.float32)
        teacher = MLP(self.spec.teacher_sizes, self.spec.outputs, "tanh")
        y = teacher.apply({"params": self.teacher}, x)
        return {"x": x, "y": y + self.spec.noise_scale * jax.random.normal(noise_key, y.shape, jnp.float32)}


def regression_teacher(spec: RegressionSpec) -> dict:
    """The teacher's weights, from the spec's seed (LeCun-normal scaled ×2 so the targets are
    visibly non-linear)."""
    teacher = MLP(spec.teacher_sizes, spec.outputs, "tanh")
    params = teacher.init(jax.random.key(spec.seed), jnp.zeros((1, spec.input_dim), jnp.float32))["params"]
    return jax.tree.map(lambda w: 2.0 * w, params)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuadraticTask:
    """See `QuadraticSpec`. Minimum expected loss is 0.5 · noise² · Σ h_i."""

    curvatures: jax.Array
    spec: QuadraticSpec = dataclasses.field(metadata=dict(static=True))

    def init(self, key: jax.Array) -> dict:
        return {"x": jax.random.normal(key, (self.spec.dim,), jnp.float32)}

    def loss(self, params: dict, batch: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(self.curvatures * (params["x"] - batch) ** 2)

    def batch(self, key: jax.Array, split: str = "train") -> jax.Array:
        check_split(split)
        return self.spec.noise_scale * jax.random.normal(key, (self.spec.dim,), jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RosenbrockTask:
    """See `RosenbrockSpec`; the loss is divided by dim − 1 so its scale does not grow with dim."""

    spec: RosenbrockSpec = dataclasses.field(metadata=dict(static=True))

    def init(self, key: jax.Array) -> dict:
        return {"x": jax.random.uniform(key, (self.spec.dim,), jnp.float32, -2.0, 2.0)}

    def loss(self, params: dict, batch: jax.Array) -> jax.Array:
        x = params["x"] + batch
        terms = 100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2
        return jnp.sum(terms) / (self.spec.dim - 1)

    def batch(self, key: jax.Array, split: str = "train") -> jax.Array:
        check_split(split)
        return self.spec.noise_scale * jax.random.normal(key, (self.spec.dim,), jnp.float32)


def quadratic_curvatures(spec: QuadraticSpec) -> np.ndarray:
    """Curvatures log-spaced from 1 to `condition_number`, shuffled by the spec's seed."""
    curvatures = np.logspace(0.0, np.log10(spec.condition_number), spec.dim)
    return np.random.default_rng(spec.seed).permutation(curvatures).astype(np.float32)


def build(spec: TaskSpec) -> ClassificationTask | LanguageModelTask | RegressionTask | QuadraticTask | RosenbrockTask:
    """Turn any `TaskSpec` into its task, loading data (from cache) as needed."""
    if isinstance(spec, MLPSpec) and spec.loss not in CLASSIFICATION_LOSSES:
        raise ValueError(f"unknown classification loss {spec.loss!r}; valid: {', '.join(CLASSIFICATION_LOSSES)}")
    if isinstance(spec, RegressionSpec):
        activation(spec.activation)
        if min(spec.input_dim, spec.outputs, spec.batch_size) <= 0:
            raise ValueError("regression input_dim, outputs and batch_size must be positive")
        return RegressionTask(regression_teacher(spec), spec)
    if isinstance(spec, MLPSpec | ConvSpec):
        activation(spec.activation)
        data = load(spec.dataset)
        if not isinstance(data, ClassificationData):
            raise ValueError(f"{spec.kind} tasks need a classification dataset, got {spec.dataset!r}")
        return ClassificationTask(data, spec)
    if isinstance(spec, TransformerSpec):
        data = load(spec.dataset)
        if not isinstance(data, TextData):
            raise ValueError(f"transformer tasks need a text dataset, got {spec.dataset!r}")
        if spec.model_dim % spec.num_heads:
            raise ValueError(f"model_dim {spec.model_dim} is not divisible by num_heads {spec.num_heads}")
        return LanguageModelTask(data, spec)
    if isinstance(spec, QuadraticSpec):
        return QuadraticTask(jnp.asarray(quadratic_curvatures(spec)), spec)
    if isinstance(spec, RosenbrockSpec):
        if spec.dim < 2:
            raise ValueError("rosenbrock needs dim >= 2")
        return RosenbrockTask(spec)
    raise TypeError(f"no task is built from {type(spec).__name__}")

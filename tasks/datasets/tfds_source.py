"""Real datasets through TensorFlow Datasets, read as numpy (no TensorFlow needed).

Datasets must already be prepared in the array_record format (`tfds build --file_format
array_record`, or a `GeneratorBasedBuilder` with `file_format="array_record"`); nothing is
downloaded here. `tfds.data_source` reads records by index, so a split becomes one numpy array
that is then moved to the device like the embedded datasets.

Supported feature layouts:
- image classification: an `image` feature (H, W, C) and a `label` ClassLabel (mnist,
  fashion_mnist, cifar10, ...): inputs scaled to [0, 1] and standardised with train statistics;
- text: a `text` feature (lm1b, ...): bytes become ASCII character tokens, as in `pytext`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from lopt.tasks.datasets.base import ClassificationData, TextData, standardize

TEXT_VOCAB = 128


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:  # the GPU image ships without it
        raise ImportError(
            "TFDS datasets need `tensorflow-datasets` (pip install tensorflow-datasets); "
            "the embedded datasets (digits, mnist1d, pytext) need nothing"
        ) from error
    return tfds


def _read_split(name: str, split: str, data_dir: str | None, max_examples: int | None) -> list:
    tfds = _import_tfds()
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:
        raise FileNotFoundError(
            f"TFDS dataset {name!r} split {split!r} is not prepared in array_record format under "
            f"data_dir={data_dir!r} ({type(error).__name__}: {error}). Prepare it with "
            f"`tfds build {name} --file_format=array_record` on a machine with internet."
        ) from error
    count = len(source) if max_examples is None else min(len(source), max_examples)
    return source.__getitems__(list(range(count)))


@functools.lru_cache(maxsize=8)
def _classification_numpy(
    name: str, data_dir: str | None, max_examples: int | None
) -> tuple[tuple[np.ndarray, ...], int]:
    tfds = _import_tfds()
    splits = {}
    for split in ("train", "test"):
        records = _read_split(name, split, data_dir, max_examples)
        images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.float32)
        labels = np.asarray([int(r["label"]) for r in records], dtype=np.int32)
        if images.dtype != np.float32 or images.max() > 1.0:
            images = images / 255.0
        splits[split] = (images, labels)
    train_x, test_x = standardize(splits["train"][0], splits["test"][0])
    num_classes = tfds.builder(name, data_dir=data_dir).info.features["label"].num_classes
    return (train_x, splits["train"][1], test_x, splits["test"][1]), int(num_classes)


def tfds_classification(name: str, data_dir: str | None = None, max_examples: int | None = None) -> ClassificationData:
    """An image-classification TFDS dataset (features `image`, `label`) as on-device arrays."""
    (train_x, train_y, test_x, test_y), num_classes = _classification_numpy(name, data_dir, max_examples)
    return ClassificationData(
        jnp.asarray(train_x),
        jnp.asarray(train_y),
        jnp.asarray(test_x),
        jnp.asarray(test_y),
        name=f"tfds:{name}",
        num_classes=num_classes,
    )


@functools.lru_cache(maxsize=8)
def _text_numpy(name: str, data_dir: str | None, max_examples: int | None) -> tuple[np.ndarray, ...]:
    streams = []
    for split in ("train", "test"):
        records = _read_split(name, split, data_dir, max_examples)
        text = b"\n".join(r["text"] if isinstance(r["text"], bytes) else str(r["text"]).encode() for r in records)
        raw = np.frombuffer(text, dtype=np.uint8)
        streams.append(np.where(raw < TEXT_VOCAB, raw, 0).astype(np.int32))
    return tuple(streams)


def tfds_text(name: str, data_dir: str | None = None, max_examples: int | None = None) -> TextData:
    """A text TFDS dataset (feature `text`) as character tokens on the device."""
    train, test = _text_numpy(name, data_dir, max_examples)
    return TextData(jnp.asarray(train), jnp.asarray(test), name=f"tfds:{name}", vocab_size=TEXT_VOCAB)

"""Datasets: embedded (offline) and TensorFlow Datasets, all held on the device.

`load(name)` resolves a dataset name: `digits`, `mnist1d`, `mnist1d-large` (100,000 examples),
`pytext`, or `tfds:<name>` for a prepared TFDS dataset (its data directory from the
`TFDS_DATA_DIR` environment variable or tfds's default).
"""

from __future__ import annotations

import os

from lopt.tasks.datasets.base import ClassificationData, TextData
from lopt.tasks.datasets.embedded import digits, mnist1d, mnist1d_large, pytext
from lopt.tasks.datasets.tfds_source import tfds_classification, tfds_text

__all__ = [
    "ClassificationData",
    "TextData",
    "digits",
    "mnist1d",
    "mnist1d_large",
    "pytext",
    "tfds_classification",
    "tfds_text",
    "load",
    "EMBEDDED_IMAGE",
    "EMBEDDED_TEXT",
    "TFDS_TEXT",
]

EMBEDDED_IMAGE = {"digits": digits, "mnist1d": mnist1d, "mnist1d-large": mnist1d_large}
EMBEDDED_TEXT = {"pytext": pytext}
TFDS_TEXT = ("lm1b", "tiny_shakespeare")


def load(name: str) -> ClassificationData | TextData:
    """Load a dataset by name (see module docstring); unknown names list the valid ones."""
    if name in EMBEDDED_IMAGE:
        return EMBEDDED_IMAGE[name]()
    if name in EMBEDDED_TEXT:
        return EMBEDDED_TEXT[name]()
    if name.startswith("tfds:"):
        tfds_name = name.removeprefix("tfds:")
        data_dir = os.environ.get("TFDS_DATA_DIR")
        if tfds_name.split("/")[0] in TFDS_TEXT:
            return tfds_text(tfds_name, data_dir=data_dir)
        return tfds_classification(tfds_name, data_dir=data_dir)
    valid = sorted([*EMBEDDED_IMAGE, *EMBEDDED_TEXT]) + ["tfds:<name>"]
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(valid)}")

"""Embedded datasets and the TensorFlow-Datasets path (offline, on a dataset built here)."""

import jax
import numpy as np
import pytest

from lopt.tasks import datasets


def test_embedded_shapes_and_standardisation():
    digits = datasets.load("digits")
    assert digits.input_shape == (8, 8, 1) and digits.num_classes == 10
    assert digits.train_x.shape[0] + digits.test_x.shape[0] == 1797
    assert abs(float(digits.train_x.mean())) < 1e-4 and abs(float(digits.train_x.std()) - 1) < 1e-3
    signals = datasets.load("mnist1d")
    assert signals.input_shape == (40, 1)
    assert set(np.unique(np.asarray(signals.train_y))) == set(range(10))
    text = datasets.load("pytext")
    assert text.vocab_size == 128 and int(text.train_tokens.max()) < 128
    assert text.train_tokens.shape[0] > 100_000


def test_mnist1d_is_deterministic_and_learnable_signal():
    a, b = datasets.mnist1d(), datasets.mnist1d()
    np.testing.assert_array_equal(a.train_x, b.train_x)
    # class means differ: the labels carry signal (a nearest-mean classifier beats chance).
    x, y = np.asarray(a.train_x)[..., 0], np.asarray(a.train_y)
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    tx, ty = np.asarray(a.test_x)[..., 0], np.asarray(a.test_y)
    predicted = np.argmin(((tx[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == ty).mean() > 0.2


def test_mnist1d_large_is_twenty_times_the_examples():
    small, large = datasets.mnist1d(), datasets.load("mnist1d-large")
    assert large.name == "mnist1d-large"
    assert large.train_x.shape == (80_000, 40, 1) and large.test_x.shape == (20_000, 40, 1)
    assert large.train_x.shape[1:] == small.train_x.shape[1:] and large.num_classes == small.num_classes
    x = np.asarray(large.train_x)
    assert abs(x.mean()) < 1e-3 and abs(x.std() - 1.0) < 1e-2  # standardised like mnist1d
    assert np.bincount(np.asarray(large.train_y), minlength=10).min() > 7_000  # every class, about evenly
    assert datasets.load("mnist1d-large") is large  # generated once per process


def test_sampling_bad_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        datasets.load("digits").sample(jax.random.key(0), 4, "validation")


def _build_local_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class LoptTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=(6, 6, 1), dtype=np.uint8),
                        "label": tfds.features.ClassLabel(num_classes=3),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 1)}

        def _generate_examples(self, count, seed):
            rng = np.random.default_rng(seed)
            for i in range(count):
                yield (
                    i,
                    {
                        "image": np.full((6, 6, 1), 20 * (i % 3), np.uint8)
                        + rng.integers(0, 5, (6, 6, 1), dtype=np.uint8),
                        "label": i % 3,
                    },
                )

    builder = LoptTinyImages(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    return "lopt_tiny_images"


def test_tfds_path_reads_a_locally_built_dataset(tmp_path, monkeypatch):
    name = _build_local_tfds(tmp_path)
    data = datasets.tfds_classification(name, data_dir=str(tmp_path))
    assert data.num_classes == 3 and data.input_shape == (6, 6, 1)
    assert data.train_x.shape[0] == 30 and data.test_x.shape[0] == 9
    # the label is recoverable from the image: the conversion kept examples and labels aligned
    brightness = np.asarray(data.train_x).mean(axis=(1, 2, 3))
    assert np.all(np.diff([brightness[np.asarray(data.train_y) == c].mean() for c in range(3)]) > 0)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert datasets.load(f"tfds:{name}").train_x.shape == (30, 6, 6, 1)


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="tfds build"):
        datasets.tfds_classification("lopt_not_prepared_anywhere", data_dir=str(tmp_path))

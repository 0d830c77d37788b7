"""The search's store of lowered population calls (meta_train.search.store, `lowered_dir`): a
later process compiles from the stored `jax.export` module instead of tracing and lowering again,
with the same losses; a damaged file is lowered again; the key follows what the call depends on;
`precompile` lowers the missing calls in worker processes."""

import dataclasses

import numpy as np
import pytest

from lopt.programs import check, seed
from lopt.meta_train.search import store
from lopt.meta_train.search.fitness import BatchedEvaluator
from lopt.meta_train.search.config import FitnessSpec

SPEC = FitnessSpec(
    tasks=("digits-mlp-relu32",), steps=8, seeds=2, lr_multipliers=(0.3, 1.0), batch=2, interpreter="batched"
)


@pytest.fixture(scope="module")
def graphs():
    return [check(seed("adamw_paper_eps")), check(seed("lion"))]


@pytest.fixture(scope="module")
def reference(graphs):
    return BatchedEvaluator(SPEC, lowered_dir=None).losses(graphs)


def test_a_stored_call_is_read_back_without_tracing_and_gives_the_same_losses(tmp_path, graphs, reference, monkeypatch):
    first = BatchedEvaluator(SPEC, lowered_dir=tmp_path).losses(graphs)
    stored = sorted(tmp_path.glob("*.jaxexport"))
    assert len(stored) == 1 and first.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(first, reference)
    assert np.isfinite(reference).all()

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again although the call was stored")

    monkeypatch.setattr(BatchedEvaluator, "_build", no_tracing)
    np.testing.assert_array_equal(BatchedEvaluator(SPEC, lowered_dir=tmp_path).losses(graphs), reference)


def test_a_damaged_stored_call_is_lowered_again(tmp_path, graphs, reference):
    first = BatchedEvaluator(SPEC, lowered_dir=tmp_path)
    first.losses(graphs)
    (key,) = first._executables
    path = first.lowered_path(*key)
    path.write_bytes(b"not a jax.export module")
    np.testing.assert_array_equal(BatchedEvaluator(SPEC, lowered_dir=tmp_path).losses(graphs), reference)
    assert path.stat().st_size > 1000  # replaced by a real module
    assert not list(tmp_path.glob("*.tmp"))


def test_the_store_key_follows_spec_shape_platform_and_sources(tmp_path, monkeypatch):
    base = BatchedEvaluator(SPEC, lowered_dir=tmp_path)
    path = base.lowered_path("digits-mlp-relu32", 2, "step", 4)
    assert path.parent == tmp_path and path == BatchedEvaluator(SPEC, lowered_dir=tmp_path).lowered_path(
        "digits-mlp-relu32", 2, "step", 4
    )
    others = {
        base.lowered_path("digits-mlp-relu32", 3, "step", 4),
        base.lowered_path("digits-mlp-relu32", 2, "kernel", 4),
        base.lowered_path("digits-mlp-relu32", 2, "step", 2),
        BatchedEvaluator(dataclasses.replace(SPEC, steps=9), lowered_dir=tmp_path).lowered_path(
            "digits-mlp-relu32", 2, "step", 4
        ),
        BatchedEvaluator(SPEC, lowered_dir=tmp_path, platform="cuda").lowered_path("digits-mlp-relu32", 2, "step", 4),
    }
    assert path not in others and len(others) == 5
    monkeypatch.setattr(store, "source_digest", lambda: "another checkout")
    assert base.lowered_path("digits-mlp-relu32", 2, "step", 4) != path
    assert BatchedEvaluator(SPEC, lowered_dir=None).lowered_path("digits-mlp-relu32", 2, "step", 4) is None
    assert (
        BatchedEvaluator(SPEC, step=lambda *a: a[2], lowered_dir=tmp_path).lowered_path(
            "digits-mlp-relu32", 2, "step", 4
        )
        is None
    )


def test_precompile_lowers_the_missing_calls_in_worker_processes(tmp_path, graphs, reference):
    evaluator = BatchedEvaluator(SPEC, lowered_dir=tmp_path)
    assert evaluator.precompile([1], workers=2) == 2  # padded sizes 1 and 2
    assert len(list(tmp_path.glob("*.jaxexport"))) == 2 and not list(tmp_path.glob("*.tmp"))
    np.testing.assert_array_equal(evaluator.losses(graphs), reference)


def test_a_failing_lowering_worker_is_reported(tmp_path):
    evaluator = BatchedEvaluator(SPEC, lowered_dir=tmp_path)
    with pytest.raises(RuntimeError, match="lowering worker failed"):
        evaluator._lower_elsewhere([("no-such-task", 1, "step", 2)], 1)

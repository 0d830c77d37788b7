"""A meta-training run folder: orbax checkpoints of the whole state, the run's config (checked on
resume), the metrics log (cut back to the resumed step) and its figure.

    <run.output_dir>/config.json      the config, without output_dir (a folder can be moved)
    <run.output_dir>/checkpoints/     orbax steps (the newest two) of the whole state
    <run.output_dir>/outer/           orbax steps of the outer state alone (step, theta, the outer
                                      optimizer's state, the counts): kilobytes, where the whole
                                      state holds every worker's inner run (gigabytes on a GPU),
                                      so a run moves between machines without its populations
    <run.output_dir>/metrics.jsonl    one row per log / eval step
    <run.output_dir>/optimizer/, best/, meta_training.png   written by meta_train.run
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import lopt
from lopt.checkpoint import CheckpointError, is_lopt_checkpoint, quiet_failed_reads
from lopt.config import ConfigError, describe_error
from lopt.meta_train.config import MetaTrainConfig


def checkpoint_manager(directory: Path, config: MetaTrainConfig):
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _newest_restorable(manager: ocp.CheckpointManager, abstract_of: Callable[[int], Any], what: str) -> Any:
    """(step, restored tree) of the newest step of `manager` that restores onto `abstract_of(step)`,
    None if there is none. A SIGKILL can land while the newest step is being written: older steps
    are tried in turn, with a warning; none restoring is one CheckpointError naming each failure."""
    if manager.latest_step() is None:
        return None
    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
        abstract = abstract_of(step)
        try:
            with quiet_failed_reads():
                restored = manager.restore(step, args=ocp.args.StandardRestore(_without_empty(abstract)))
            return step, _with_empty(restored, abstract)
        except Exception as error:  # orbax raises many types for a damaged step
            failures.append(f"step {step}: {describe_error(error)}")
            warnings.warn(
                f"{manager.directory}: could not restore {what} step {step}; trying an older one", stacklevel=3
            )
    raise CheckpointError(f"{manager.directory}: no {what} could be restored ({'; '.join(failures)})")


def restore(manager: ocp.CheckpointManager, trainer: Any) -> Any:
    """The newest checkpoint that restores onto `trainer.abstract_state` (None if there is none)."""
    # A checkpoint of step s holds the workers of the tasks trained at step s − 1: at a task
    # change (s a multiple of tasks.lifetime) those differ from step s's, maybe in shape.
    found = _newest_restorable(manager, lambda step: trainer.abstract_state(max(step - 1, 0)), "checkpoint")
    return None if found is None else found[1]


def _without_empty(tree: Any) -> Any:
    """`tree` with its zero-size arrays (e.g. the missing column factor of a vector's factored
    accumulator) replaced by None: orbax refuses to write arrays of zero size."""
    return jax.tree.map(lambda x: None if np.prod(x.shape) == 0 else x, tree)


def _with_empty(restored: Any, template: Any) -> Any:
    """Inverse of `_without_empty`: the zero-size arrays of `template` put back as zeros."""
    leaves = jax.tree.leaves(restored, is_leaf=lambda x: x is None)
    filled = [jnp.zeros(t.shape, t.dtype) if r is None else r for t, r in zip(jax.tree.leaves(template), leaves)]
    return jax.tree.structure(template).unflatten(filled)


def config_record(config: MetaTrainConfig) -> dict[str, Any]:
    """The config as a run folder records it: JSON-ready, without `run.output_dir`, so a run
    folder can be moved or named by a relative path and still resume."""
    record = json.loads(json.dumps(dataclasses.asdict(config), default=list))
    del record["run"]["output_dir"]
    return record


PER_CALL_FIELDS = ("time_limit_s",)  # how long this call may run, not what the run computes


def _without_per_call(record: dict[str, Any]) -> dict[str, Any]:
    run = {k: v for k, v in record.get("run", {}).items() if k not in PER_CALL_FIELDS}
    return {**record, "run": run}


def check_run_config(output: Path, config: MetaTrainConfig) -> None:
    """Record the config in `output/config.json` at a run's start; a later call into the same
    folder must match it (whatever the newest checkpoint holds), except in PER_CALL_FIELDS: a run
    continued across device calls may get a different time limit on each."""
    path = output / "config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"{path} is not a readable run config ({error}); move it away to start a new run"
            ) from None
        if _without_per_call(saved) != _without_per_call(config_record(config)):
            raise ConfigError(
                f"{output} holds a run with a different config; use another run.output_dir "
                "or delete the old run to start over"
            )
        return
    staging = output / ".config.json.tmp"
    staging.write_text(json.dumps(config_record(config), indent=2))
    os.replace(staging, path)


_OUTER_FIELDS = ("step", "theta", "outer_state", "skipped", "diverged")


def save(manager: ocp.CheckpointManager, state: Any, outer: ocp.CheckpointManager | None = None) -> None:
    """Checkpoint `state` (the run's config lives once in the run folder, `_check_run_config`);
    with `outer`, its outer part too (`restore_outer`)."""
    manager.save(int(state.step), args=ocp.args.StandardSave(_without_empty(state)))
    if outer is not None:
        part = {name: getattr(state, name) for name in _OUTER_FIELDS}
        outer.save(int(state.step), args=ocp.args.StandardSave(_without_empty(part)))
        outer.wait_until_finished()
    manager.wait_until_finished()


def restore_outer(manager: ocp.CheckpointManager, trainer: Any) -> Any:
    """The newest outer-only checkpoint (`save`'s `outer`) as a whole state whose task groups are
    fresh populations for its step, or None if there is none. Resuming from it restarts every
    worker's inner run (as a task change does) and keeps theta, the outer optimizer's moments
    and the step: how a run continues on a machine its gigabytes of populations did not reach."""
    whole = trainer.abstract_state(0)
    abstract = {name: getattr(whole, name) for name in _OUTER_FIELDS}
    found = _newest_restorable(manager, lambda step: abstract, "outer checkpoint")
    if found is None:
        return None
    step, part = found
    groups = [trainer.group_state(g, step, part["theta"]) for g in range(trainer.config.tasks.num_groups)]
    return whole._replace(groups=groups, **part)


def truncate_log(log_path: Path, step: int) -> None:
    """Keep the log rows of outer steps up to `step` (the checkpoint a run resumes from, 0 for a
    fresh start); rows a killed run wrote after its last checkpoint would repeat on resume.
    A half-written last line is dropped too. Rewritten atomically."""
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step and (step or "eval_loss" not in row):
            kept.append(line)
    staging = log_path.with_suffix(".jsonl.tmp")
    staging.write_text("".join(line + "\n" for line in kept))
    os.replace(staging, log_path)


def validation_summary(log_path: Path) -> dict[str, dict[str, float]]:
    """{'validation_start': {...}, 'validation_best': {...}} from the log's validation rows
    (score, seed spread, step), or {} when the run scores no validation tasks."""
    if not log_path.exists():
        return {}
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("validation_score") is not None]
    if not rows:
        return {}
    pick = lambda r: {"score": r["validation_score"], "spread": r.get("validation_seed_spread", 0.0), "step": r["step"]}
    return {"validation_start": pick(rows[0]), "validation_best": pick(min(rows, key=lambda r: r["validation_score"]))}


def check_best(output: Path) -> None:
    """Refuse, before any compute, a run folder whose `best/` lopt may not replace: the run would
    otherwise stop at its first better validation score (`lopt.save` replaces only a checkpoint
    exactly as it wrote it). An archive of a run unpacked over an older copy of the same folder
    leaves the older save's array files beside the newer ones, and makes such a `best/`."""
    best = output / "best"
    if best.exists() and not is_lopt_checkpoint(best):
        raise ConfigError(
            f"run.output_dir: {best} is not a checkpoint exactly as lopt wrote it (files other than "
            "its manifest lists: was a copy unpacked over an older one?), so a better theta could not "
            "replace it; move it away, or unpack the run into an empty folder"
        )


def best_score(output: Path) -> float | None:
    """The validation score of the `best/` optimizer a run (being resumed) already saved."""
    try:
        return float(lopt.read_manifest(output / "best")["provenance"]["validation_score"])
    except Exception:  # no best/ yet, or one written before validation scores were kept
        return None


def plot_metrics(log_path: Path, figure_path: Path, lifetime: int | None = None) -> None:
    """Meta-loss and evaluation loss against outer step, from the JSONL log; dotted lines mark
    where the task groups were resampled (the meta-loss jumps with the tasks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "meta_loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    validation_rows = [r for r in eval_rows if r.get("validation_score") is not None]
    figure, axes = plt.subplots(1, 3 if validation_rows else 2, figsize=(15 if validation_rows else 10, 3.6))
    meta_losses = [r["meta_loss"] for r in train_rows]
    axes[0].plot([r["step"] for r in train_rows], meta_losses, lw=1.2)
    axes[0].set_title("meta-loss (the estimator's objective over a window)")
    if meta_losses and min(meta_losses) > 0:  # a log-loss objective goes negative below loss 1
        axes[0].set_yscale("log")
    if lifetime and train_rows:
        for boundary in range(lifetime, train_rows[-1]["step"], lifetime):
            axes[0].axvline(boundary, color="grey", ls=":", lw=0.8)
    if eval_rows:
        axes[1].plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-", label="learned")
        if "adam_loss" in eval_rows[0]:
            axes[1].axhline(eval_rows[0]["adam_loss"], color="grey", ls="--", label="adam (lr 1e-3)")
        axes[1].legend()
        axes[1].set_yscale("log")
    axes[1].set_title("held-out task: final train loss")
    if validation_rows:
        steps = [r["step"] for r in validation_rows]
        score = np.array([r["validation_score"] for r in validation_rows])
        spread = np.array([r.get("validation_seed_spread", 0.0) for r in validation_rows])
        axes[2].plot(steps, score, "o-", color="C2")
        axes[2].fill_between(steps, score - spread, score + spread, color="C2", alpha=0.2, label="± seed spread")
        axes[2].set_title("validation score (lower is better)")
        axes[2].legend()
    for axis in axes:
        axis.set_xlabel("outer step")
        axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.savefig(figure_path, dpi=120)
    plt.close(figure)

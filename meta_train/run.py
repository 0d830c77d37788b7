"""`lopt meta-train`: the job runner around `meta_train.loop.MetaTrainer`. It claims and
resumes the run folder, steps the trainer, logs, evaluates and keeps the best theta by
validation, checkpoints, and saves the final optimizer. Each part is a function of its own."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np
from tqdm.auto import tqdm

import lopt
from lopt import jobdir
from lopt.config import ConfigError
from lopt.meta_train import run_folder
from lopt.meta_train.config import MetaTrainConfig
from lopt.meta_train.loop import MetaTrainer, MetaTrainState
from lopt.meta_train.validation import adam_reference


def _open(config: MetaTrainConfig, lead: bool) -> tuple[MetaTrainer, tuple[Any, Any], MetaTrainState, bool]:
    """The trainer, the checkpoint managers (whole state, outer part), the state (restored or
    fresh) and whether it resumed.
    The memory check runs before the folder is claimed: a refused job leaves nothing behind."""
    output = Path(config.run.output_dir)
    trainer = MetaTrainer(config)
    trainer.check_memory()
    if lead:
        jobdir.claim(output, "meta-train")
        run_folder.check_run_config(output, config)
        run_folder.check_best(output)
    else:
        output.mkdir(parents=True, exist_ok=True)
    manager = run_folder.checkpoint_manager(output / "checkpoints", config)
    outer = run_folder.checkpoint_manager(output / "outer", config)
    state = run_folder.restore(manager, trainer)
    if state is None:  # moved without its populations: fresh workers, the outer state kept
        state = run_folder.restore_outer(outer, trainer)
    if state is None and (output / "optimizer").exists():
        raise ConfigError(
            f"run.output_dir: {output} holds a finished run's optimizer/ but no checkpoint to resume; "
            "move it away or use another run.output_dir"
        )
    resumed = state is not None
    return trainer, (manager, outer), state if resumed else trainer.initial_state(), resumed


@dataclasses.dataclass
class _Evaluations:
    """The periodic evaluation: a log row with the eval task's loss, Adam's reference and the
    validation scores; the best theta by validation saved to best/ (by the lead process)."""

    config: MetaTrainConfig
    trainer: MetaTrainer
    log: IO[str]
    lead: bool
    best_score: float | None
    adam_loss: float | None = None

    def __call__(self, state: MetaTrainState, step: int) -> None:
        if self.adam_loss is None:
            self.adam_loss = adam_reference(self.config)
        row = {
            "step": step,
            "eval_loss": self.trainer.evaluate(state.theta),
            "adam_loss": self.adam_loss,
            **self.trainer.validate(state.theta),
        }
        _write(self.log, row)
        score = row.get("validation_score")
        if not (self.lead and score is not None and np.isfinite(score)):
            return
        if self.best_score is None or score < self.best_score:
            self.best_score = score
            info = {
                "config": dataclasses.asdict(self.config),
                "outer_steps": step,
                "validation_score": score,
                "validation": {k: v for k, v in row.items() if k.startswith("validation/")},
            }
            lopt.save(
                Path(self.config.run.output_dir) / "best",
                self.trainer.meta_optimizer,
                state.theta,
                info,
                num_steps=self.config.estimator.max_horizon,
                overwrite=True,
            )


def _write(log: IO[str], row: dict[str, Any]) -> None:
    log.write(json.dumps(row) + "\n")
    log.flush()


def _due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (every `every` outer steps, and at the last) runs at `step`."""
    return bool(every) and (step % every == 0 or step == last)


def _finish(
    config: MetaTrainConfig, trainer: MetaTrainer, state: MetaTrainState, log_path: Path, resumed: bool
) -> dict[str, Any]:
    """The run's summary; when every outer step is done, the optimizer saved and the curves drawn."""
    output = Path(config.run.output_dir)
    summary = {
        "steps": int(state.step),
        "resumed": resumed,
        "log": str(log_path),
        "skipped": int(state.skipped),
        "diverged": int(state.diverged),
        **run_folder.validation_summary(log_path),
    }
    if int(state.step) < config.outer.steps:
        return summary
    info = {
        "config": dataclasses.asdict(config),
        "estimator": config.estimator.kind,
        "outer_steps": int(state.step),
        "inner_steps": sum(trainer.inner_steps_per_outer_step(s) for s in range(int(state.step))),
    }
    path = lopt.save(
        output / "optimizer",
        trainer.meta_optimizer,
        state.theta,
        info,
        num_steps=config.estimator.max_horizon,
        overwrite=True,
    )
    run_folder.plot_metrics(log_path, output / "meta_training.png", config.tasks.lifetime)
    summary |= {"optimizer": str(path), "figure": str(output / "meta_training.png")}
    if (output / "best").exists():
        summary["best"] = str(output / "best")
    return summary


def meta_train(config: MetaTrainConfig, *, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the job of `config`; returns a summary with the saved optimizer's path.

    stop_after: return after this many outer steps in this call (to test resuming)."""
    call_start = time.perf_counter()  # run.time_limit_s counts compiles and evaluation too
    if config.run.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    lead = jax.process_index() == 0
    output = Path(config.run.output_dir)
    trainer, managers, state, resumed = _open(config, lead)
    log_path = output / "metrics.jsonl"
    start_step, last = int(state.step), config.outer.steps
    if lead and log_path.exists():
        run_folder.truncate_log(log_path, start_step)
    log = log_path.open("a") if lead else open(os.devnull, "w")
    bar = tqdm(
        total=last,
        initial=start_step,
        desc="lopt meta-train",
        unit="step",
        disable=not (progress and lead),
        dynamic_ncols=True,
    )
    evaluate = _Evaluations(config, trainer, log, lead, run_folder.best_score(output))
    if lead and not resumed and config.run.eval_every:
        evaluate(state, 0)
    window_start, window_steps, steps_done, previous = time.perf_counter(), 0, 0, None
    try:
        step = start_step
        while step < last:
            window_steps += trainer.inner_steps_per_outer_step(step)
            state, summary = trainer.step(state, step)
            # The host runs at most one step ahead of the devices. XLA's CPU client admits 32
            # programs per device at a time and a program waiting for its inputs keeps its place;
            # with the population sharded over host devices the README's main job deadlocked in 3
            # of 7 runs (gdb: one device's half of a step waited for a place, the other half for
            # it at the all-reduce) and XLA ended it after 40 s. With this wait and the step's
            # tail as one program (`MetaTrainer._finish`): 9 of 9 runs finished.
            if previous is not None:
                jax.block_until_ready(previous)
            previous, step, steps_done = summary, step + 1, steps_done + 1
            bar.update(1)
            if _due(step, config.run.log_every, last):
                summary = {k: v.item() for k, v in jax.device_get(summary).items()}  # waits for the device
                rate = window_steps / max(time.perf_counter() - window_start, 1e-9)
                _write(log, summary | {"step": step, "inner_steps_per_s": rate})
                bar.set_postfix(meta_loss=f"{summary['meta_loss']:.3f}", steps_s=f"{rate:.0f}")
                window_start, window_steps = time.perf_counter(), 0
            if _due(step, config.run.eval_every, last):
                evaluate(state, step)
            out_of_time = config.run.time_limit_s and time.perf_counter() - call_start > config.run.time_limit_s
            if _due(step, config.run.checkpoint_every, last) or out_of_time:
                run_folder.save(managers[0], state, managers[1])
            if out_of_time or (stop_after is not None and steps_done >= stop_after):
                break
    finally:
        bar.close()
        log.close()
    return _finish(config, trainer, state, log_path, resumed)

"""After a search: simplify the best program — by meta-validation when the search has it, else by
proxy fitness — (dead code, then ablation scored by the search's own fitness), re-evaluate the best
distinct programs stage by stage against tuned AdamW (the funnel), record which known motifs the
best programs contain (`lopt.programs.motifs`), and write best.txt, funnel.json and summary.json.
`lopt search` calls `finish`; `top` reads the best distinct programs of any search folder's log."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from lopt.config import ConfigError, describe_error
from lopt.programs.analysis import Graph, check, structural_hash
from lopt.programs.functional import functional_hashes
from lopt.programs.lang import format_program, parse
from lopt.programs.motifs import MOTIFS, motifs
from lopt.programs.seeds import seed
from lopt.programs.simplify import simplify
from lopt.programs.optimizer import save_program
from lopt.meta_train.search.config import FitnessSpec, SearchConfig
from lopt.meta_train.search.fitness import evaluator
from lopt.meta_train.search.scoring import task_scores
from lopt.meta_train.search.files import atomic_write, json_float


def _jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The records of a JSON-lines file that are objects holding the `required` keys; a torn
    last line (a search killed mid-write) is skipped. A file that is not UTF-8 text, or in which
    no line is such a record while some line is not, is a one-line ConfigError."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a lopt search log (not UTF-8 text)") from None
    records, rejected = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            rejected += 1
            continue
        if isinstance(record, dict) and all(key in record for key in required):
            records.append(record)
        elif line.strip():
            rejected += 1
    if rejected > 1 and not records:
        raise ConfigError(f"{path}: not a lopt search log (no line is a record with {', '.join(required) or 'data'})")
    return records


def top(directory: str | Path, count: int = 10) -> list[dict[str, Any]]:
    """The best distinct programs (by structural hash) in a search's log, best first."""
    log = Path(directory) / "log.jsonl"
    if not log.is_file():
        raise ConfigError(f"{directory}: no search log (log.jsonl)")
    best: dict[str, dict[str, Any]] = {}
    for entry in _jsonl(log, ("fitness", "structural", "id", "text", "generation", "mutation")):
        if (
            not isinstance(entry["fitness"], int | float)
            or isinstance(entry["fitness"], bool)
            or not isinstance(entry["id"], int)
            or not isinstance(entry["structural"], str)
            or not isinstance(entry["text"], str)
        ):
            continue
        known = best.get(entry["structural"])
        if known is None or entry["id"] < known["id"]:
            best[entry["structural"]] = entry
    return sorted(best.values(), key=lambda e: e["fitness"])[:count]


def validated(directory: str | Path, count: int) -> list[str]:
    """The texts of the `count` best distinct programs (by structural hash) by meta-validation
    fitness in a search's validation.jsonl, best first (none without meta-validation)."""
    best: dict[str, tuple[float, str]] = {}
    for entry in _jsonl(Path(directory) / "validation.jsonl", ("validation", "text")):
        if not isinstance(entry["validation"], int | float) or isinstance(entry["validation"], bool):
            continue
        key = structural_hash(check(parse(entry["text"])))
        if key not in best or entry["validation"] < best[key][0]:
            best[key] = (entry["validation"], entry["text"])
    return [text for _, text in sorted(best.values())[:count]]


def curves(directory: str | Path) -> dict[str, Any]:
    """The search's fitness and meta-validation curves from its logs: per generation, the best
    and the median proxy fitness of the children scored (trained, hurdle-stopped or answered by
    a cache) and the best so far; the validation fitness of each meta-validated program and its
    best so far; the number of programs trained (on at least one proxy) so far."""
    directory = Path(directory)
    number = lambda x: isinstance(x, int | float) and not isinstance(x, bool)  # noqa: E731
    entries = [
        e
        for e in _jsonl(directory / "log.jsonl", ("generation", "fitness"))
        if isinstance(e["generation"], int) and (e["fitness"] is None or number(e["fitness"]))
    ]
    if not entries:
        raise ConfigError(f"{directory}: no search log (log.jsonl) to plot")
    by_generation: dict[int, list[float]] = {}
    trained: dict[int, int] = {}
    for e in entries:
        finite = by_generation.setdefault(e["generation"], [])
        if e["fitness"] is not None:
            finite.append(e["fitness"])
        if e.get("scored") in ("trained", "hurdle", "seed"):
            trained[e["generation"]] = trained.get(e["generation"], 0) + 1
    generations = sorted(by_generation)
    # NaN where no child of a generation scored a finite fitness (all stopped at the hurdle or
    # diverged): a gap in the per-generation curves, the best so far carried over.
    best = [min(by_generation[g], default=np.nan) for g in generations]
    validation = _jsonl(directory / "validation.jsonl", ("generation", "validation"))
    scored = [(v["generation"], v["validation"]) for v in validation if number(v["validation"])]
    return {
        "generation": generations,
        "best": best,
        "median": [float(np.median(by_generation[g])) if by_generation[g] else np.nan for g in generations],
        "best_so_far": np.fmin.accumulate(best).tolist(),
        "trained_so_far": np.cumsum([trained.get(g, 0) for g in generations]).tolist(),
        "validation_generation": [g for g, _ in scored],
        "validation": [v for _, v in scored],
        "validation_best_so_far": np.minimum.accumulate([v for _, v in scored]).tolist() if scored else [],
    }


def plot_search(directory: str | Path, path: str | Path) -> Path:
    """Draw `curves(directory)` to `path` (PNG): proxy fitness per generation with the seed's and
    the tuned references' fitness (from summary.json when the search has finished), and the
    meta-validation fitness of the programs validated (a gap between the two curves' trends is
    meta-overfitting: Chen et al. 2023, Sec. 2.3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(directory)
    summary_path = Path(directory) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    panels = 2 if data["validation"] else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    ax.plot(data["generation"], data["median"], color="0.7", lw=0.8, label="median of the generation's children")
    ax.plot(data["generation"], data["best"], color="tab:blue", lw=0.8, alpha=0.6, label="best of the generation")
    ax.plot(data["generation"], data["best_so_far"], color="tab:blue", lw=2, label="best so far")
    lines = {
        "seed": summary.get("seed_fitness"),
        **{f"{k} (tuned)": v for k, v in summary.get("proxy_references", {}).items()},
    }
    for (name, value), color in zip(lines.items(), ("k", "tab:red", "tab:green", "tab:purple")):
        if value is not None:
            ax.axhline(value, color=color, ls="--", lw=1, label=f"{name} {value:.3f}")
    low = float(np.nanmin(data["best_so_far"])) - 0.2
    ax.set_ylim(low, max(low + 0.5, float(np.nanpercentile(data["median"], 75)) + 0.2))
    ax.set_xlabel("generation")
    ax.set_ylabel("proxy fitness (mean log test loss; lower is better)")
    ax.set_title(f"{data['trained_so_far'][-1]:,} programs trained")
    ax.legend(fontsize=7)
    if panels == 2:
        ax = axes[0][1]
        ax.scatter(
            data["validation_generation"], data["validation"], s=12, color="tab:orange", label="validated program"
        )
        ax.step(
            data["validation_generation"],
            data["validation_best_so_far"],
            where="post",
            color="tab:orange",
            lw=2,
            label="best so far",
        )
        ax.set_xlabel("generation")
        ax.set_ylabel("meta-validation fitness (lower is better)")
        ax.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def stage_scores(spec: FitnessSpec, graphs: list[Graph], seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """One funnel stage's score per program, free of the winner's curse: the learning rate is
    chosen on `seeds` seeds (lowest median final loss over `spec`'s LR grid) and the score is
    log(median final loss) at that rate over `seeds` other seeds; returns (scores, the chosen
    index into the grid). Picking the best of several rates on the same noisy runs that are then
    reported rewards luck: on a GPU search's funnel (2026-12-02) two copies of one Adam-like
    program, run with 2 seeds in different batches, scored −2.81 and −2.53 on the first stage
    (AdamW: −2.57), and the CPU's scan gave −2.53 for both; near the edge of stability float
    rounding alone moves a 1,000-step run's loss by 20%."""
    one_task = dataclasses.replace(spec, seeds=seeds)
    tune = evaluator(one_task).losses(graphs)[:, 0]  # [programs, lrs, seeds]
    test = evaluator(dataclasses.replace(one_task, seed=spec.seed + FUNNEL_TEST_SEED)).losses(graphs)[:, 0]
    tune = np.where(np.isfinite(tune), tune, np.inf)
    chosen = np.argmin(np.median(tune, axis=-1), axis=-1)
    at_chosen = test[np.arange(len(graphs)), chosen][:, None]  # [programs, 1 lr, seeds]
    return task_scores(at_chosen), chosen


# The funnel's test seeds are the fitness seed + this (the tuning seeds are the fitness seed's).
FUNNEL_TEST_SEED = 1_000_003


def funnel(config: SearchConfig, candidates: list[str], progress: bool = True) -> list[dict[str, Any]]:
    """Re-evaluate program texts stage by stage against tuned AdamW (the candidates over
    `funnel.lr_multipliers`, AdamW over `funnel.adamw_lrs`, each rate chosen on `funnel.seeds`
    seeds and scored on as many others: `stage_scores`); a program reaches the next stage only if
    it beats AdamW on this one. A program whose update is not finite on the functional probes
    (`lopt.programs.functional`: e.g. 0/0 where a gradient is exactly zero) enters no stage.
    Returns one record per program."""
    records = [{"text": text, "stages": [], "promoted": True} for text in candidates]
    for record, (_, finite) in zip(records, functional_hashes([check(parse(text)) for text in candidates])):
        if not finite:
            record.update(promoted=False, rejected="a non-finite update on the functional probes")
    adamw = check(seed("adamw"))
    for task, steps in zip(config.funnel.tasks, config.funnel.steps):
        alive = [r for r in records if r["promoted"]]
        if not alive:
            break
        spec = config.fitness.for_tasks(
            (task,),
            steps,
            batch=config.funnel.top,
            lr_multipliers=config.funnel.lr_multipliers,
            metric=config.funnel.metric,
        )
        (reference,), (reference_lr,) = stage_scores(
            dataclasses.replace(spec, lr_multipliers=config.funnel.adamw_lrs), [adamw], config.funnel.seeds
        )
        scores, chosen = stage_scores(spec, [check(parse(r["text"])) for r in alive], config.funnel.seeds)
        for record, value, lr in zip(alive, scores, chosen):
            beats = bool(value < reference)
            record["stages"].append(
                {
                    "task": task,
                    "steps": steps,
                    "fitness": json_float(value),
                    "metric": config.funnel.metric,
                    "adamw_fitness": json_float(reference),
                    "beats_adamw": beats,
                    "lr": config.funnel.lr_multipliers[int(lr)],
                    "adamw_lr": config.funnel.adamw_lrs[int(reference_lr)],
                }
            )
            record["promoted"] = beats
        if progress:
            print(
                f"funnel {task} ({steps} steps): {sum(r['promoted'] for r in alive)}/{len(alive)} beat tuned AdamW "
                f"(fitness {reference:.4f})"
            )
    return records


def tune_step_size(config: SearchConfig, text: str) -> tuple[float, list[dict[str, Any]]]:
    """The value of one program's `lr` input for shipping: one rate for every funnel stage of
    `config`, under `config.fitness.schedule`, chosen on the funnel's tuning seeds as the rate
    with the lowest sum over stages of log(median final loss), and scored at that rate on as many
    other seeds (`stage_scores`' protocol, across stages instead of per stage). A user's task is
    none of the stages, so the rate is the one that does well on all of them: the largest
    stage's own choice can sit at its grid's edge and transfer badly (the shipped H200 program
    under cosine tuned to 10 on digits-mlp-silu96x2 and to 300, the grid's top, on
    mnist1d-conv-48). Returns (that rate, one record per stage with its score at that rate and
    the rate the stage alone would choose)."""
    if not config.funnel.tasks:
        raise ConfigError("funnel.tasks: the config has no funnel stages to tune the step size on")
    graph = check(parse(text))
    ((_, finite),) = functional_hashes([graph])
    if not finite:
        raise ConfigError("the program's update is not finite on the functional probes (e.g. 0/0 at a zero gradient)")
    tuned, tested = [], []
    for task, steps in zip(config.funnel.tasks, config.funnel.steps):
        spec = config.fitness.for_tasks(
            (task,), steps, batch=1, lr_multipliers=config.funnel.lr_multipliers, metric=config.funnel.metric
        )
        spec = dataclasses.replace(spec, seeds=config.funnel.seeds)
        for seeds_of, offset in ((tuned, 0), (tested, FUNNEL_TEST_SEED)):
            losses = evaluator(dataclasses.replace(spec, seed=spec.seed + offset)).losses([graph])[0, 0]
            seeds_of.append(np.where(np.isfinite(losses), losses, np.inf))  # [lrs, seeds]
    with np.errstate(divide="ignore"):
        logged = np.log(np.maximum(np.median(np.stack(tuned), axis=-1), 1e-30))  # [stages, lrs]
    if not np.isfinite(logged.sum(axis=0)).any():
        raise ConfigError("the program's runs are not finite at any rate of funnel.lr_multipliers on some funnel stage")
    chosen = int(np.argmin(logged.sum(axis=0)))
    stages = [
        {
            "task": task,
            "steps": steps,
            "fitness": json_float(float(task_scores(test[chosen][None, :]))),
            "metric": config.funnel.metric,
            "lr": config.funnel.lr_multipliers[chosen],
            "lr_alone": config.funnel.lr_multipliers[int(np.argmin(stage_logged))],
        }
        for task, steps, test, stage_logged in zip(config.funnel.tasks, config.funnel.steps, tested, logged)
    ]
    return float(config.funnel.lr_multipliers[chosen]), stages


def rediscovered(directory: str | Path, count: int = 20) -> dict[str, int]:
    """How many of the `count` best distinct programs of a search's log contain each motif."""
    found = [motifs(check(parse(entry["text"]))) for entry in top(directory, count)]
    return {name: sum(name in names for names in found) for name in MOTIFS}


def promoted_program(records: list[dict[str, Any]]) -> str | None:
    """The text of the program the funnel promoted through every stage by the largest mean
    margin over tuned AdamW (log loss), or None when none was promoted."""
    margins = {
        r["text"]: float(np.mean([s["fitness"] - s["adamw_fitness"] for s in r["stages"]]))
        for r in records
        if r["promoted"] and r["stages"]
    }
    return min(margins, key=margins.get) if margins else None


REFERENCES = ("adamw", "lion")
# The references read `lr` as their learning rate; children scale it by their own constants
# (the AdamW seed by 1e-3), so the references are tuned over every half-decade from 1e-5 to 1.
REFERENCE_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def proxy_references(config: SearchConfig) -> dict[str, float]:
    """The proxy fitness of AdamW and Lion (the seed programs `adamw`, `lion`) on the search's own
    tasks, steps and seeds, each tuned over `REFERENCE_LRS`: the engine check of a search is
    whether its best reaches them (Chen et al. 2023 found Lion from an AdamW seed)."""
    spec = dataclasses.replace(
        config.fitness, lr_multipliers=REFERENCE_LRS, lr_scales=(), interpreter="jit"
    )  # two programs
    scores = evaluator(spec)([check(seed(name)) for name in REFERENCES])
    return {name: json_float(value) for name, value in zip(REFERENCES, scores)}


def _funnel_and_ship(config: SearchConfig, output: Path, summary: dict[str, Any], progress: bool, say: Any) -> None:
    """Funnel the search's candidates (the shipped pick, the `funnel.top` best by proxy fitness,
    the `funnel.validated` best by meta-validation), write funnel.json, and where a program beat
    tuned AdamW on every stage ship it: best.txt and `summary["shipped"]` (updated in place)."""
    candidates = (
        [summary["simplified"]]
        + [e["text"] for e in top(output, config.funnel.top)]
        + validated(output, config.funnel.validated)
    )
    summary["shipped"].pop("lr", None)  # an earlier funnel's choice
    records = funnel(config, list(dict.fromkeys(candidates)), progress=progress)
    atomic_write(output / "funnel.json", json.dumps(records, indent=2))
    summary["funnel"] = records
    say(f"wrote {output / 'funnel.json'}")
    promoted = promoted_program(records)
    lr_of = {r["text"]: r["stages"][-1]["lr"] for r in records if r["stages"]}  # at its largest stage
    if promoted is not None:
        summary["shipped"]["lr"] = lr_of[promoted]
    if promoted is not None and promoted != summary["shipped"]["text"]:
        # A program that beat tuned AdamW on every larger stage is the better bet for tasks
        # the search never saw than one that did not (Chen et al. 2023's funnel): ship it.
        shipped, _ = simplify(parse(promoted))
        summary["shipped"] = {"by": "funnel", "text": format_program(shipped), "lr": lr_of[promoted]}
        atomic_write(output / "best.txt", format_program(shipped))
        say(
            "the funnel promoted another program (it beat tuned AdamW on every stage); best.txt is now:\n"
            + format_program(shipped)
        )
    elif promoted is None:
        by = summary["shipped"]["by"]
        if by == "funnel":  # an earlier funnel's pick, which this one did not promote
            by = "meta-validation" if "best_validated" in summary else "proxy fitness"
            summary["shipped"] = {"by": by, "text": summary["simplified"]}
            atomic_write(output / "best.txt", summary["simplified"])
        if summary["shipped"]["text"] in lr_of:
            summary["shipped"]["lr"] = lr_of[summary["shipped"]["text"]]
        say(f"no program beat tuned AdamW on every funnel stage; best.txt is the {by} pick")


def ship_checkpoint(output: Path, summary: dict[str, Any], say: Any = print) -> Path:
    """Save the shipped program as a checkpoint in `output`/program with the step size the funnel
    chose for it (its lr input at the largest stage it ran; 1.0 when no funnel ran), so that
    `lopt.load(<search folder>)` without a sweep is the optimizer the funnel scored."""
    shipped = summary["shipped"]
    lr = float(shipped.get("lr", 1.0))
    info = {"source": "lopt search", "shipped_by": shipped["by"], "lr_from": "funnel" if "lr" in shipped else "default"}
    schedule = summary.get("schedule", "constant")
    path = save_program(output / "program", shipped["text"], lr, info, overwrite=True, schedule=schedule)
    say(f"wrote {path} (lopt.load({str(output)!r}); the program's lr input {lr:g}, from the {info['lr_from']})")
    return path


def refunnel(directory: str | Path, config: SearchConfig, progress: bool = True, say: Any = print) -> dict[str, Any]:
    """Funnel a finished search in `directory` again under `config`'s funnel and fitness sections
    (e.g. after the funnel changed: on 2026-12-03 it went from final test loss over 6 rates to
    final train loss over 8), over the candidates `finish` funnels, and rewrite funnel.json,
    best.txt and summary.json as `finish` writes them; returns the summary. The search itself
    is not touched."""
    output = Path(directory)
    path = output / "summary.json"
    if not path.is_file():
        raise ConfigError(
            f"{directory}: no finished search (summary.json missing); finish it with `lopt search --resume {directory}`"
        )
    try:
        summary = json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path}: not JSON ({describe_error(error)})") from None
    shipped = summary.get("shipped") if isinstance(summary, dict) else None
    if not (
        isinstance(summary, dict)
        and isinstance(summary.get("simplified"), str)
        and isinstance(shipped, dict)
        and isinstance(shipped.get("text"), str)
        and isinstance(shipped.get("by"), str)
    ):
        raise ConfigError(f"{path}: not a search summary (needs 'simplified' and 'shipped' with 'text' and 'by')")
    if not config.funnel.tasks:
        raise ConfigError("funnel.tasks: the config has no funnel stages")
    summary["schedule"] = config.fitness.schedule
    _funnel_and_ship(config, output, summary, progress, say)
    ship_checkpoint(output, summary, say)
    atomic_write(path, json.dumps(summary, indent=2, default=float))
    say(f"wrote {output / 'best.txt'}, {path}")
    return summary


def finish(
    search: Any, *, ablate: bool = True, tolerance: float = 0.01, progress: bool = True, say: Any = print
) -> dict[str, Any]:
    """Simplify the finished `search`'s best program, run the funnel (when the config has one)
    and write best.txt, funnel.json and summary.json in its folder; returns the summary.
    `say` receives the lines a user should see."""
    config, best, stats = search.config, search.best, search.statistics()
    output = Path(config.run.output_dir)
    chosen = search.best_validated or best  # with meta-validation, its best is the one shipped
    if search.best_validated is not None:
        say(
            f"best by meta-validation on {config.validation.task}: id {chosen.id} (validation fitness "
            f"{chosen.fitness:.4f}); best by proxy fitness: id {best.id}"
        )
    fitness = evaluator(config.fitness) if ablate else None
    simplified, notes = simplify(parse(chosen.text), fitness=fitness, tolerance=tolerance)
    atomic_write(output / "best.txt", format_program(simplified))
    say("best program, simplified:" + "".join(f"\n  - {note}" for note in notes))
    say(format_program(simplified))
    references = proxy_references(config)
    say(
        f"proxy fitness (lower is better): best {best.fitness:.4f}, seed {search.seed_fitness:.4f}, "
        + ", ".join(f"{name} {value:.4f}" for name, value in references.items())
    )
    found, counts = motifs(check(simplified)), rediscovered(output)
    say(
        f"motifs of the best program: {', '.join(found) or 'none'}; among the best 20 distinct programs: "
        + ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    )
    summary = {
        "best": {"text": best.text, "fitness": best.fitness},
        "simplified": format_program(simplified),
        "simplifications": notes,
        "seed_fitness": search.seed_fitness,
        "proxy_references": references,
        "statistics": stats,
        "motifs": found,
        "motifs_in_top_20": counts,
        "schedule": config.fitness.schedule,  # the lr schedule every run was scored under, shipped with the program
    }
    if search.best_validated is not None:
        summary["best_validated"] = {
            "id": chosen.id,
            "text": chosen.text,
            "validation_fitness": chosen.fitness,
            "task": config.validation.task,
            "steps": config.validation.steps,
        }
    summary["shipped"] = {
        "by": "meta-validation" if search.best_validated is not None else "proxy fitness",
        "text": format_program(simplified),
    }
    if config.funnel.tasks:
        _funnel_and_ship(config, output, summary, progress, say)
    ship_checkpoint(output, summary, say)
    atomic_write(output / "summary.json", json.dumps(summary, indent=2, default=float))
    say(f"wrote {output / 'best.txt'}, {output / 'summary.json'}, {output / 'log.jsonl'}")
    return summary

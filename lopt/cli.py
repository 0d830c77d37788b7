"""The `lopt` command: argument parsing only; each subcommand calls its job's package (imported
lazily, so `lopt --help` and `lopt info` start fast)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from lopt.checkpoint import CheckpointError
from lopt.config import ConfigError
from lopt.programs.lang import ProgramError


def _eval(args: argparse.Namespace) -> int:
    from lopt.eval import EvalConfig, run_eval
    from lopt.config import load_config

    config = load_config(EvalConfig, args.config, args.set)
    outcome = run_eval(config, progress=not args.quiet)
    print(outcome.table)
    print()
    for label, path in outcome.files.items():
        print(f"wrote {label}: {path}")
    print(f"lopt eval finished in {outcome.seconds:.1f}s")
    return 0


def _meta_train(args: argparse.Namespace) -> int:
    from lopt.config import load_config
    from lopt.meta_train.config import MetaTrainConfig
    from lopt.meta_train.run import meta_train

    overrides = list(args.set)
    if getattr(args, "init", None):
        overrides.append(f"optimizer.init_from={json.dumps(args.init)}")
    config = load_config(MetaTrainConfig, args.config, overrides)
    summary = meta_train(config, progress=not args.quiet)
    if summary["resumed"]:
        print(f"resumed from the checkpoint in {config.run.output_dir}")
    print(
        f"meta-training finished at outer step {summary['steps']} ({summary['skipped']} non-finite steps skipped, "
        f"{summary['diverged']} diverged worker windows masked)"
    )
    if "validation_start" in summary:
        start, best = summary["validation_start"], summary["validation_best"]
        print(
            f"validation score (mean log of final loss ÷ Adam 1e-3's, lower is better; ± seed spread): "
            f"start {start['score']:.3f} ± {start['spread']:.3f} (step {start['step']}), "
            f"best {best['score']:.3f} ± {best['spread']:.3f} (step {best['step']})"
        )
    for key in ("optimizer", "best", "log", "figure"):
        if key in summary:
            print(f"wrote {key}: {summary[key]}")
    return 0


def _hpo(args: argparse.Namespace) -> int:
    from lopt.config import load_config
    from lopt.eval.hpo import HPOConfig, run_hpo

    config = load_config(HPOConfig, args.config, args.set)
    outcome = run_hpo(config)
    print("\n".join(outcome["table"]))
    print()
    for label, path in outcome["files"].items():
        print(f"wrote {label}: {path}")
    print(f"lopt hpo finished in {outcome['seconds']:.1f}s")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from lopt.checkpoint import load_meta, read_manifest

    manifest = read_manifest(args.path)  # a CheckpointError is one line and exit 2 (main)
    meta_optimizer, theta = load_meta(args.path)
    import jax

    count = sum(x.size for x in jax.tree.leaves(theta))
    print(f"{args.path}: {manifest['kind']} learned optimizer, {count:,} meta-parameters (checksums verified)")
    print(f"constructor: {json.dumps(manifest['config'])}")
    print(f"default num_steps: {manifest.get('num_steps')}")
    provenance = {k: v for k, v in manifest.get("provenance", {}).items() if k != "config"}
    print(f"provenance: {json.dumps(provenance, default=str)}")
    return 0


def _baselines(args: argparse.Namespace) -> int:
    from lopt import baselines

    for name in baselines.names():
        entry = baselines.spec(name)
        defaults = ", ".join(f"{k}={v}" for k, v in entry.defaults.items())
        print(f"{name:20s} lr={entry.learning_rate:<8g} grid={list(entry.lr_grid)}  {defaults}  [{entry.source}]")
    return 0


def _native(args: argparse.Namespace) -> int:
    """Build the native CPU kernel now (not inside a user's first jit trace) and say its state."""
    import warnings

    from lopt.learned import native

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reason is printed below, once
        ok = native.available()
    print(f"native CPU kernel: {'available' if ok else 'unavailable: ' + native.unavailable_reason()}")
    print(f"compiler: {native.compiler() or 'none found (set CXX)'}")
    print(f"cache: {native.cache_dir()}")
    print(f"AMX tiles: {native.amx()}")
    return 0 if ok or native.unavailable_reason() == native.TURNED_OFF else 1


def _search(args: argparse.Namespace) -> int:
    from lopt.config import load_config
    from lopt.meta_train.search.config import SearchConfig, config_from_dir
    from lopt.meta_train.search.job import Search
    from lopt.meta_train.search.pipeline import finish

    if args.resume:
        config = config_from_dir(args.resume)
        search = Search(config, resume=True, progress=not args.quiet)
        print(f"resuming {args.resume} at generation {search.generation}")
    elif args.config:
        config = load_config(SearchConfig, args.config, args.set)
        search = Search(config, progress=not args.quiet)
    else:
        raise ConfigError("give a search config or --resume DIR")
    best = search.run()
    stats = search.statistics()
    print(
        f"search finished at generation {search.generation}: best fitness {best.fitness:.4f} "
        f"(seed {search.seed_fitness:.4f}); {stats['children']} children, {stats['trained']} trained"
        + (f" and {stats['hurdle_stops']} stopped at the hurdle" if stats['hurdle_stops'] else "")
        + ", "
        f"{stats['programs_per_second']:.1f} programs/s ({stats['trained_per_second']:.1f} trained/s, "
        f"{stats['inner_steps_per_second']:,.0f} inner steps/s; "
        f"{stats['inner_steps_per_second_compiled']:,.0f} leaving out "
        f"{stats['share_compile']:.0%} of the time spent compiling), "
        f"cache hit rate {stats['cache_hit_rate']:.1%}, rejected by the probe {stats['rejected_rate']:.1%}"
    )
    finish(search, ablate=not args.no_ablate, tolerance=args.tolerance, progress=not args.quiet)
    return 0


def _search_top(args: argparse.Namespace) -> int:
    from lopt.programs import check, parse
    from lopt.programs.motifs import motifs
    from lopt.meta_train.search.pipeline import top

    for rank, entry in enumerate(top(args.directory, args.n), start=1):
        found = motifs(check(parse(entry["text"])))
        print(
            f"#{rank}  fitness {entry['fitness']:.4f}  (child {entry['id']}, generation {entry['generation']}, "
            f"{entry['mutation']}; motifs: {', '.join(found) or 'none'})"
        )
        print(entry["text"])
    return 0


def _search_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lopt.meta_train.search.pipeline import plot_search

    print(f"wrote {plot_search(args.directory, args.output or Path(args.directory) / 'curves.png')}")
    return 0


def _search_funnel(args: argparse.Namespace) -> int:
    from lopt.config import load_config
    from lopt.meta_train.search.config import SearchConfig, config_from_dir
    from lopt.meta_train.search.pipeline import refunnel

    config = (
        load_config(SearchConfig, args.config, args.set) if args.config else config_from_dir(args.directory, args.set)
    )
    refunnel(args.directory, config, progress=not args.quiet)
    return 0


def _program(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lopt.config import load_config
    from lopt.programs import check, format_program, parse, redundant_fraction, structural_hash
    from lopt.programs.functional import functional_hashes

    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"{path}: no such program file")
    try:
        program = parse(path.read_text())
        graph = check(program)
    except ValueError as error:
        print(f"lopt program: {path}: {error}", file=sys.stderr)
        return 2
    if args.action == "check":
        ((functional, finite),) = functional_hashes([graph])
        print(
            f"{path}: valid; {len(program.statements)} statements, {redundant_fraction(program):.0%} redundant; "
            f"structural hash {structural_hash(program)}, functional hash {functional}"
            f"{'' if finite else ' (non-finite on the probe)'}"
        )
        return 0
    if args.action == "simplify":
        from lopt.programs.simplify import simplify

        fitness = None
        if args.ablate:
            from lopt.meta_train.search.fitness import evaluator
            from lopt.meta_train.search.config import SearchConfig

            fitness = evaluator(load_config(SearchConfig, args.ablate).fitness)
        simplified, notes = simplify(program, fitness=fitness, tolerance=args.tolerance)
        for note in notes:
            print(f"# {note}")
        print(format_program(simplified), end="")
        return 0
    from lopt.programs.optimizer import save_program

    if not args.out:
        raise ConfigError("usage: lopt program export FILE OUT")
    learning_rate, schedule, info = args.learning_rate, args.schedule or "constant", {"source": str(path)}
    if args.set and not args.tune:
        raise ConfigError("lopt program export: --set overrides the --tune config; there is no --tune")
    if args.tune:
        from lopt.meta_train.search.config import SearchConfig
        from lopt.meta_train.search.pipeline import tune_step_size

        if args.learning_rate is not None:
            raise ConfigError("lopt program export: give --learning-rate or --tune, not both")
        search = load_config(SearchConfig, args.tune, args.set)
        if args.schedule is not None and args.schedule != search.fitness.schedule:
            raise ConfigError(
                f"lopt program export: --schedule {args.schedule} differs from {args.tune}'s fitness.schedule "
                f"{search.fitness.schedule!r}, under which the step size is tuned"
            )
        # The output folder is checked before the sweeps, as `save` will check it after them.
        from lopt.checkpoint import is_lopt_checkpoint

        if Path(args.out).exists() and not args.overwrite:
            raise ConfigError(f"{args.out} exists (pass --overwrite to replace it)")
        if Path(args.out).exists() and not is_lopt_checkpoint(Path(args.out)):
            raise ConfigError(f"{args.out} exists and is not a lopt optimizer checkpoint: not replaced")
        learning_rate, stages = tune_step_size(search, format_program(program))
        schedule = search.fitness.schedule
        for stage in stages:
            print(
                f"{stage['task']} ({stage['steps']} steps, {schedule}): {stage['metric']} fitness "
                f"{stage['fitness']} at lr input {stage['lr']:g} (this stage alone would choose {stage['lr_alone']:g})"
            )
        info |= {"lr_from": f"funnel stages of {args.tune}", "stages": stages}
    rate = 1.0 if learning_rate is None else learning_rate
    written = save_program(args.out, program, rate, info, overwrite=args.overwrite, schedule=schedule)
    print(f"wrote {written} (load with lopt.load({str(written)!r}); lr input {rate:g})")
    return 0


def _number(low: float, *, strict: bool, what: str):
    """An argparse type: a finite float above `low` (strict) or at least `low`, else one line."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


TOLERANCE = _number(0.0, strict=False, what="a finite non-negative number")
POSITIVE = _number(0.0, strict=True, what="a finite positive number")


class OneLineParser(argparse.ArgumentParser):
    """Command-line mistakes end in one line naming the command and the problem (`--help`
    shows the usage); argparse's default prints the usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_job(commands, name: str, handler, help_text: str, example_config: str, example_override: str) -> None:
    """A subcommand that runs a TOML job config with --set overrides and a progress bar."""
    job = commands.add_parser(name, help=help_text)
    job.add_argument("config", help=f"TOML config, e.g. {example_config}")
    job.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key (repeatable), e.g. --set {example_override}",
    )
    job.add_argument("--quiet", action="store_true", help="no progress bar")
    job.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lopt", description="Learned optimizers in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_job(
        commands,
        "eval",
        _eval,
        "evaluate optimizers on a suite of tasks",
        "configs/eval/embedded-small.toml",
        "num_steps=200",
    )
    _add_job(
        commands,
        "meta-train",
        _meta_train,
        "meta-train a learned optimizer (resumes if interrupted)",
        "configs/meta_train/quickstart.toml",
        "outer.steps=100",
    )
    commands.choices["meta-train"].add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from this saved optimizer's theta (a path or shipped name): fine-tune it on the config's tasks",
    )

    _add_job(
        commands,
        "hpo",
        _hpo,
        "tune hyperparameters by gradient: Self-Tuning Networks or implicit differentiation",
        "configs/hpo/stn-digits.toml",
        "steps=1000",
    )

    info = commands.add_parser("info", help="describe a saved optimizer checkpoint")
    info.add_argument("path", help="checkpoint directory, e.g. runs/quickstart/optimizer")
    info.set_defaults(handler=_info)

    search = commands.add_parser(
        "search",
        help="search for optimizer programs (regularized evolution); "
        "`lopt search CONFIG` is short for `lopt search run CONFIG`",
    )
    search_commands = search.add_subparsers(dest="search_command", required=True)
    run = search_commands.add_parser("run", help="run (or --resume) a search job")
    run.add_argument("config", nargs="?", help="TOML config, e.g. configs/search/quickstart.toml")
    run.add_argument("--resume", metavar="DIR", help="continue the search in DIR after an interruption")
    run.add_argument("--tolerance", type=TOLERANCE, default=0.01, help="ablation tolerance of the final simplification")
    run.add_argument("--no-ablate", action="store_true", help="simplify the best program without ablation runs")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_search)
    best = search_commands.add_parser("top", help="the best distinct programs in a search folder's log")
    best.add_argument("directory", help="the search directory (its run.output_dir)")
    best.add_argument("-n", type=int, default=10, help="how many programs")
    best.set_defaults(handler=_search_top)

    curves = search_commands.add_parser("plot", help="draw a search's fitness and meta-validation curves")
    curves.add_argument("directory", help="the search directory (its run.output_dir)")
    curves.add_argument("-o", "--output", help="the PNG to write (default: DIRECTORY/curves.png)")
    curves.set_defaults(handler=_search_plot)

    again = search_commands.add_parser(
        "funnel",
        help="run a finished search's funnel again (e.g. under a changed "
        "funnel) and rewrite its funnel.json, best.txt and summary.json",
    )
    again.add_argument("directory", help="the search directory (its run.output_dir)")
    again.add_argument(
        "--config",
        help="take the funnel and fitness settings from this TOML config (default: the search's own config.json)",
    )
    again.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. fitness.interpreter='jit' on a CPU",
    )
    again.add_argument("--quiet", action="store_true", help="no progress output")
    again.set_defaults(handler=_search_funnel)

    program = commands.add_parser("program", help="check, simplify or export an optimizer program file")
    program.add_argument("action", choices=("check", "simplify", "export"))
    program.add_argument("file", help="program text file")
    program.add_argument("out", nargs="?", help="with export: the checkpoint directory to write")
    program.add_argument(
        "--ablate", metavar="SEARCH_CONFIG", help="simplify: also ablate statements, scored by this config's fitness"
    )
    program.add_argument(
        "--tolerance", type=TOLERANCE, default=0.01, help="simplify: allowed fitness loss per ablation"
    )
    program.add_argument(
        "--learning-rate", type=POSITIVE, default=None, help="export: the value of the program's lr input (default 1)"
    )
    program.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default=None,
        help="export: the lr input's schedule (cosine: 5%% warm-up, then cosine decay to 0; default constant)",
    )
    program.add_argument(
        "--tune",
        metavar="SEARCH_CONFIG",
        help="export: choose one lr input for all of this search config's funnel stages (lowest summed log loss "
        "on the funnel's tuning seeds), under its fitness.schedule",
    )
    program.add_argument("--set", action="append", default=[], help="with --tune: KEY=VALUE overrides of its config")
    program.add_argument("--overwrite", action="store_true", help="export: replace an existing checkpoint")
    program.set_defaults(handler=_program)

    listing = commands.add_parser("baselines", help="list the registered hand-designed optimizers")
    listing.set_defaults(handler=_baselines)

    build = commands.add_parser(
        "native", help="build the native CPU kernel of the per-parameter MLP now and report its status"
    )
    build.set_defaults(handler=_native)
    return parser


SEARCH_COMMANDS = ("run", "top", "plot", "funnel", "-h", "--help")
HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def split_host_cpus(environ: dict[str, str] | None = None) -> None:
    """Expose one XLA CPU device per available core (at most 8), unless XLA_FLAGS already sets a
    count. XLA's CPU backend runs one program's small batched matrix products on one core, so
    meta-training on a CPU shards its population over these devices (run.shard_population) to
    use every core (docs/benchmarks.md). Must run before JAX
    creates its backend; accelerators are unaffected (the CPU devices then go unused)."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if HOST_DEVICE_FLAG in flags:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores > 1:
        environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICE_FLAG}={min(cores, 8)}".strip()


def main(argv: list[str] | None = None) -> int:
    split_host_cpus()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "search" and argv[1] not in SEARCH_COMMANDS:
        argv.insert(1, "run")  # `lopt search CONFIG` / `lopt search --resume DIR`
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"lopt {args.command}: config error: {error}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, NotADirectoryError) as error:
        print(f"lopt {args.command}: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, ProgramError) as error:
        print(f"lopt {args.command}: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # permissions, a read-only or full disk, a folder where a file goes
        where = f" ({error.filename})" if error.filename else ""
        print(f"lopt {args.command}: cannot read or write{where}: {error.strerror or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

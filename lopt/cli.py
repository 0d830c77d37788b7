"""The `lopt` command. Subcommands import the heavier packages lazily."""

from __future__ import annotations

import argparse
import sys

from lopt.config import ConfigError


def _eval(args: argparse.Namespace) -> int:
    from eval import EvalConfig, run_eval
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
    from meta_train.config import MetaTrainConfig
    from meta_train.loop import meta_train

    config = load_config(MetaTrainConfig, args.config, args.set)
    summary = meta_train(config, progress=not args.quiet)
    if summary["resumed"]:
        print(f"resumed from the checkpoint in {config.run.output_dir}")
    print(f"meta-training finished at outer step {summary['steps']} ({summary['skipped']} non-finite steps skipped)")
    for key in ("optimizer", "log", "figure"):
        if key in summary:
            print(f"wrote {key}: {summary[key]}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from lopt.checkpoint import CheckpointError, load_meta, read_manifest

    try:
        manifest = read_manifest(args.path)
        meta_optimizer, theta = load_meta(args.path)
    except CheckpointError as error:
        print(f"lopt info: {error}", file=sys.stderr)
        return 1
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


def _add_job(commands, name: str, handler, help_text: str, example_config: str, example_override: str) -> None:
    """A subcommand that runs a TOML job config with --set overrides and a progress bar."""
    job = commands.add_parser(name, help=help_text)
    job.add_argument("config", help=f"TOML config, e.g. {example_config}")
    job.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help=f"override a config key (repeatable), e.g. --set {example_override}")
    job.add_argument("--quiet", action="store_true", help="no progress bar")
    job.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lopt", description="Learned optimizers in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_job(commands, "eval", _eval, "evaluate optimizers on a suite of tasks",
             "configs/eval/embedded-small.toml", "num_steps=200")
    _add_job(commands, "meta-train", _meta_train, "meta-train a learned optimizer (resumes if interrupted)",
             "configs/meta_train/quickstart.toml", "outer.steps=100")

    info = commands.add_parser("info", help="describe a saved optimizer checkpoint")
    info.add_argument("path", help="checkpoint directory, e.g. runs/quickstart/optimizer")
    info.set_defaults(handler=_info)

    listing = commands.add_parser("baselines", help="list the registered hand-designed optimizers")
    listing.set_defaults(handler=_baselines)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"lopt {args.command}: config error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

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


def _baselines(args: argparse.Namespace) -> int:
    from lopt import baselines

    for name in baselines.names():
        entry = baselines.spec(name)
        defaults = ", ".join(f"{k}={v}" for k, v in entry.defaults.items())
        print(f"{name:20s} lr={entry.learning_rate:<8g} grid={list(entry.lr_grid)}  {defaults}  [{entry.source}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lopt", description="Learned optimizers in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser("eval", help="evaluate optimizers on a suite of tasks")
    evaluate.add_argument("config", help="TOML config, e.g. configs/eval/embedded-small.toml")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key (repeatable), e.g. --set num_steps=200")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=_eval)

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

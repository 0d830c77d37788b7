"""A hostile sweep of bad input through the `lopt` command (issue 17), run in process: every
case must end in exactly one line on stderr and a non-zero exit, without a traceback and without
starting work (a 25 s guard counts a case that is still working as accepted).

Cases: the bad overrides of tests/test_cli_errors.py plus more (wrong types, empty output
folders), unreadable / binary / non-TOML / list-shaped / missing config files, hand-edited
checkpoint manifests (100k-deep JSON, path traversal, wrong shapes and checksums), damaged array
files (through `lopt info` and through `lopt eval learned=[...]`), invalid program texts (through
`program check` and `program simplify`) and `program export --overwrite` onto a folder lopt did
not write (which must survive).

    python tests/bad_input_sweep.py        # from the repository root; prints the counts
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_errors import EVAL, META_TRAIN, SEARCH  # noqa: E402

from lopt.cli import main  # noqa: E402

GUARD_S = 25


def build_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(label, argv) for every bad input; writes the files and folders they need under `tmp`."""
    cases = []
    for o in META_TRAIN + [
        'estimator.num_workers="4"',
        "outer.steps=1.5",
        'tasks.names="x"',
        "run=[]",
        "tasks.lifetime=1e30",
        'run.output_dir=""',
        "estimator.truncation_length=true",
        'optimizer.options={hidden_sizes="32"}',
        "optimizer.options={step_mult=-1}",
        'run.output_dir="  "',
    ]:
        where = [] if o.startswith("run.output_dir") else ["--set", f"run.output_dir={json.dumps(str(tmp / 'mt'))}"]
        cases.append(
            ("meta-train " + o, ["meta-train", "configs/meta_train/quickstart.toml", "--quiet", "--set", o, *where])
        )
    for o in EVAL + ["num_steps=1.5", 'optimizers="adam"', "seeds=-3", 'output_dir=""']:
        where = [] if o.startswith("output_dir") else ["--set", f"output_dir={json.dumps(str(tmp / 'ev'))}"]
        cases.append(("eval " + o, ["eval", "configs/eval/quickstart.toml", "--quiet", "--set", o, *where]))
    for o in SEARCH + [
        "search.population=1.5",
        "fitness.steps=true",
        'search.mutations=["nope"]',
        "fitness.precompile=[0]",
        'fitness.precompile="2"',
    ]:
        cases.append(
            (
                "search " + o,
                [
                    "search",
                    "configs/search/quickstart.toml",
                    "--quiet",
                    "--set",
                    o,
                    "--set",
                    f"run.output_dir={json.dumps(str(tmp / 'se'))}",
                ],
            )
        )
    # files
    (tmp / "bin.toml").write_bytes(b"\xff\xfe[outer]")
    (tmp / "syntax.toml").write_text("[outer\nsteps=")
    (tmp / "empty.toml").write_text("")
    (tmp / "list.toml").write_text("outer = [1, 2]")
    (tmp / "adir.toml").mkdir()
    (tmp / "blocker").write_text("x")
    for name in ["bin.toml", "syntax.toml", "list.toml", "adir.toml", "missing.toml"]:
        for cmd in ["meta-train", "eval", "search"]:
            cases.append((f"{cmd} file {name}", [cmd, str(tmp / name), "--quiet"]))
    cases.append(
        (
            "meta-train output under a file",
            [
                "meta-train",
                "configs/meta_train/quickstart.toml",
                "--quiet",
                "--set",
                f"run.output_dir={json.dumps(str(tmp / 'blocker' / 'x'))}",
            ],
        )
    )
    cases.append(("search resume empty", ["search", "--resume", str(tmp)]))
    cases.append(("search top missing", ["search", "top", str(tmp / "nope")]))
    cases.append(("search funnel missing", ["search", "funnel", str(tmp / "nope")]))
    fake = tmp / "fake-search"
    fake.mkdir()
    (fake / "config.json").write_text("{not json")
    cases.append(("search funnel corrupt config", ["search", "funnel", str(fake)]))
    cases.append(("search resume corrupt config", ["search", "--resume", str(fake)]))
    cases.append(("info missing", ["info", str(tmp / "missing")]))
    cases.append(("info a file", ["info", str(tmp / "blocker")]))
    cases.append(("info dotdot", ["info", "checkpoints/.."]))
    # checkpoints: manifest edits and damaged arrays
    base = Path("checkpoints/small-mlp-pes-h100")
    edits = {
        "arrays path": lambda m: m.update(arrays="../../etc/passwd"),
        "entry no shape": lambda m: [e.pop("shape") for e in m["arrays"]],
        "entry no path": lambda m: [e.pop("path") for e in m["arrays"]],
        "num_steps str": lambda m: m.update(num_steps="abc"),
        "kind unknown": lambda m: m.update(kind="nope"),
        "config junk": lambda m: m.update(config={"hiden": 3}),
        "config list": lambda m: m.update(config=[1]),
        "format other": lambda m: m.update(format="pickle"),
        "version future": lambda m: m.update(format_version=99),
        "dtype wrong": lambda m: [e.update(dtype="int8") for e in m["arrays"]],
        "shape wrong": lambda m: [e.update(shape=[3]) for e in m["arrays"]],
        "sha wrong": lambda m: [e.update(sha256="0" * 64) for e in m["arrays"]],
    }
    for label, edit in edits.items():
        d = tmp / f"ck-{len(cases)}"
        shutil.copytree(base, d)
        m = json.loads((d / "manifest.json").read_text())
        edit(m)
        (d / "manifest.json").write_text(json.dumps(m))
        cases.append(("manifest " + label, ["info", str(d)]))
    for label, data in {
        "nested": b"[" * 100000 + b"]" * 100000,
        "not json": b"{",
        "array": b"[]",
        "binary": b"\xff\xfe",
    }.items():
        d = tmp / f"ck-{len(cases)}"
        shutil.copytree(base, d)
        (d / "manifest.json").write_bytes(data)
        cases.append(("manifest " + label, ["info", str(d)]))
    for label in ["truncate", "delete", "flip", "theta gone"]:
        d = tmp / f"ck-{len(cases)}"
        shutil.copytree(base, d)
        chunk = sorted((d / "theta" / "ocdbt.process_0" / "d").iterdir())[0]
        data = bytearray(chunk.read_bytes())
        if label == "truncate":
            chunk.write_bytes(data[:10])
        elif label == "delete":
            chunk.unlink()
        elif label == "flip":
            data[len(data) // 2] ^= 255
            chunk.write_bytes(bytes(data))
        else:
            shutil.rmtree(d / "theta")
        cases.append(("arrays " + label, ["info", str(d)]))
        cases.append(
            (
                "eval learned arrays " + label,
                [
                    "eval",
                    "configs/eval/quickstart.toml",
                    "--quiet",
                    "--set",
                    f"learned=[{json.dumps(str(d))}]",
                    "--set",
                    f"output_dir={json.dumps(str(tmp / 'ev2'))}",
                ],
            )
        )
    # programs
    for label, text in {
        "syntax": "update = (g +",
        "unknown fn": "update = frob(g)",
        "huge const": "update = g * " + "1" * 1000000,
        "no update": "m = g",
        "binary": None,
        "deep": "update = " + "(" * 5000 + "g" + ")" * 5000,
        "undefined": "update = m",
        "empty": "",
    }.items():
        f = tmp / f"p{len(cases)}.txt"
        if text is None:
            f.write_bytes(b"\xff\xfeupdate")
        else:
            f.write_text(text)
        cases.append(("program check " + label, ["program", "check", str(f)]))
        cases.append(("program simplify " + label, ["program", "simplify", str(f)]))
    (tmp / "plain").mkdir()
    (tmp / "plain" / "keep.txt").write_text("mine")
    good = tmp / "good.txt"
    good.write_text("update = sign(g)")
    cases.append(("program export onto plain dir", ["program", "export", str(good), str(tmp / "plain"), "--overwrite"]))
    cases += second_pass_cases(tmp, base, good)
    return cases


def second_pass_cases(tmp: Path, base: Path, good: Path) -> list[tuple[str, list[str]]]:
    """Issue 40's classes: values checked at parse time, file-system errors, folders of another
    job kind or holding a user's files, special files in checkpoints, damaged search state."""
    cases = []
    mt = [
        "meta-train",
        "configs/meta_train/quickstart.toml",
        "--quiet",
        "--set",
        f"run.output_dir={json.dumps(str(tmp / 'mt3'))}",
    ]
    family = [
        'tasks.family_options={activations=["nope"]}',
        "tasks.family_options={widths=[0]}",
        "tasks.family_options={widths=[]}",
        "tasks.family_options={depths=[-1]}",
        "tasks.family_options={batch_sizes=[0]}",
        "tasks.family_options={widths=[100000000]}",
        "estimator.max_horizon=100000000000000000000",
        "estimator.max_horizon=100000000000",
        "estimator.sigma=inf",
        "estimator.sigma=nan",
        "outer.learning_rate=inf",
        "outer.clip=-inf",
        "estimator.num_workers=1000000000",
        "estimator.objective_tail=0",
        "estimator.objective_tail=2",
        'estimator.trainable="(("',
        "run.validation_seeds=0",
        "x=" + "[" * 50000 + "]" * 50000,
    ]
    cases += [("meta-train " + o[:60], [*mt, "--set", o]) for o in family]
    ev = ["eval", "configs/eval/quickstart.toml", "--quiet", "--set", f"output_dir={json.dumps(str(tmp / 'ev3'))}"]
    for o in [
        'optimizers=["adam@nan"]',
        'optimizers=["adam@1e400"]',
        'optimizers=["sgd@-1"]',
        'optimizers=["adam@0"]',
        "num_steps=100000000000000000000",
        "seeds=3000000000",
    ]:
        cases.append(("eval " + o, [*ev, "--set", o]))
    se = [
        "search",
        "configs/search/quickstart.toml",
        "--quiet",
        "--set",
        f"run.output_dir={json.dumps(str(tmp / 'se3'))}",
    ]
    for o in ["search.max_seconds=-1", "search.seed=-4", "search.restart_after=-1", "search.max_statements=0"]:
        cases.append(("search " + o, [*se, "--set", o]))
    for flag in (["--learning-rate", "-1"], ["--learning-rate", "inf"], ["--learning-rate", "nan"]):
        cases.append(("program export " + " ".join(flag), ["program", "export", str(good), str(tmp / "exp"), *flag]))
    cases.append(("program simplify --tolerance -1", ["program", "simplify", str(good), "--tolerance", "-1"]))
    deep = tmp / "deep.toml"
    deep.write_text("x = " + "[" * 50000 + "]" * 50000)
    cases += [(f"{cmd} 50,000-deep toml", [cmd, str(deep), "--quiet"]) for cmd in ("meta-train", "eval", "search")]
    # file system: outputs under a file, or through a link
    for cmd, key in (("eval", "output_dir"), ("search", "run.output_dir")):
        config = "configs/eval/quickstart.toml" if cmd == "eval" else "configs/search/quickstart.toml"
        cases.append(
            (
                f"{cmd} output under a file",
                [cmd, config, "--quiet", "--set", f"{key}={json.dumps(str(tmp / 'blocker' / 'x'))}"],
            )
        )
    cases.append(("program export under a file", ["program", "export", str(good), str(tmp / "blocker" / "x")]))
    # folders of another job kind, or holding a user's files
    run = tmp / "a-meta-train-run"
    run.mkdir()
    (run / ".lopt-job").write_text('{"job": "meta-train"}')
    (run / "config.json").write_text('{"mine": 1}')
    cases.append(("search into a meta-train run", [*se[:-2], "--set", f"run.output_dir={json.dumps(str(run))}"]))
    (tmp / "linked").symlink_to(run)
    cases.append(("search through a link", [*se[:-2], "--set", f"run.output_dir={json.dumps(str(tmp / 'linked'))}"]))
    mine = tmp / "users-results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    cases.append(("eval into a user's folder", [*ev[:-2], "--set", f"output_dir={json.dumps(str(mine))}"]))
    finished = tmp / "finished-search"
    finished.mkdir()
    (finished / ".lopt-job").write_text('{"job": "search"}')
    (finished / "log.jsonl").write_text('{"fitness": 1.0}\n')
    cases.append(
        ("search into a search without state.json", [*se[:-2], "--set", f"run.output_dir={json.dumps(str(finished))}"])
    )
    cases.append(("search resume without state.json", ["search", "--resume", str(finished)]))
    only_format = tmp / "only-format"
    (only_format / "theta").mkdir(parents=True)
    (only_format / "manifest.json").write_text('{"format": "lopt-optimizer"}')
    cases.append(
        (
            "export --overwrite onto a format-only manifest",
            ["program", "export", str(good), str(only_format), "--overwrite"],
        )
    )
    users = tmp / "ck-with-user-file"
    shutil.copytree(base, users)
    (users / "theta" / "notes.txt").write_text("mine")
    cases.append(
        (
            "export --overwrite onto a checkpoint holding a user's file",
            ["program", "export", str(good), str(users), "--overwrite"],
        )
    )
    # special files in a checkpoint (a FIFO would block a reader)
    fifo = tmp / "ck-fifo"
    shutil.copytree(base, fifo)
    (fifo / "theta" / "_METADATA").unlink()
    os.mkfifo(fifo / "theta" / "_METADATA")
    cases.append(("info with a FIFO for theta/_METADATA", ["info", str(fifo)]))
    cases.append(("eval learned with a FIFO", [*ev, "--set", f"learned=[{json.dumps(str(fifo))}]"]))
    # damaged search state and logs
    damaged = tmp / "damaged-search"
    damaged.mkdir()
    (damaged / "state.json").write_text('{"generation": 3}')
    (damaged / "log.jsonl").write_bytes(b"\xff\xfe\x00garbage\n{]\n")
    cases.append(("search top binary log", ["search", "top", str(damaged)]))
    (damaged / "log.jsonl").write_text('{"a": 1}\n[1, 2]\n"text"\n')
    cases.append(("search top keyless log", ["search", "top", str(damaged)]))
    cases.append(("search plot keyless log", ["search", "plot", str(damaged)]))
    return cases


class StillWorking(Exception):
    pass


def run_case(argv: list[str]) -> str | None:
    """None for a clean one-line error, else what went wrong."""

    def alarm(*_):
        raise StillWorking

    signal.signal(signal.SIGALRM, alarm)
    err = io.StringIO()
    signal.alarm(GUARD_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    except StillWorking:
        return f"accepted: still working after {GUARD_S} s"
    except BaseException as error:  # noqa: BLE001  (the sweep counts whatever escapes)
        return "traceback: " + traceback.format_exception_only(error)[-1][:200]
    finally:
        signal.alarm(0)
    text = err.getvalue().strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if code not in (0, None) and len(lines) == 1 and "Traceback" not in text:
        return None
    return f"rc={code}, {len(lines)} lines: {text[:200]!r}"


def main_sweep() -> int:
    tmp = Path(tempfile.mkdtemp())
    cases = build_cases(tmp)
    failures = [(label, why) for label, argv in cases if (why := run_case(argv)) is not None]
    for label, why in failures:
        print(f" - {label}: {why}")
    kept = {
        "program export --overwrite deleted a folder lopt did not write": tmp / "plain" / "keep.txt",
        "search replaced a meta-train run's config": tmp / "a-meta-train-run" / "config.json",
        "eval wrote into a user's folder": tmp / "users-results" / "thesis.tex",
        "export --overwrite deleted a user's file in a checkpoint": tmp / "ck-with-user-file" / "theta" / "notes.txt",
        "export --overwrite replaced a format-only manifest": tmp / "only-format" / "manifest.json",
    }
    lost = [what for what, path in kept.items() if not path.exists()]
    lost += ["search wrote into a meta-train run" for _ in [0] if (tmp / "a-meta-train-run" / "log.jsonl").exists()]
    lost += [
        "search rewrote a finished search's log"
        for _ in [0]
        if (tmp / "finished-search" / "log.jsonl").read_text() != '{"fitness": 1.0}\n'
    ]
    for what in lost:
        print(f" - {what}")
    tracebacks = sum(why.startswith("traceback") for _, why in failures)
    hangs = sum(why.startswith("accepted: still working") for _, why in failures)
    # an abort (a C++ CHECK, SIGABRT) would have ended this process before this line
    print(
        f"bad inputs tried: {len(cases)}; clean one-line errors: {len(cases) - len(failures)}; "
        f"tracebacks: {tracebacks}; aborts: 0; hangs: {hangs}; files lost: {len(lost)}; "
        f"other: {len(failures) - tracebacks - hangs}"
    )
    if lost:
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_sweep())

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
    for o in META_TRAIN + ['estimator.num_workers="4"', "outer.steps=1.5", 'tasks.names="x"', "run=[]",
                           "tasks.lifetime=1e30", 'run.output_dir=""', "estimator.truncation_length=true",
                           'optimizer.options={hidden_sizes="32"}', "optimizer.options={step_mult=-1}", 'run.output_dir="  "']:
        where = [] if o.startswith("run.output_dir") else ["--set", f"run.output_dir={json.dumps(str(tmp / 'mt'))}"]
        cases.append(("meta-train " + o, ["meta-train", "configs/meta_train/quickstart.toml", "--quiet", "--set", o, *where]))
    for o in EVAL + ["num_steps=1.5", 'optimizers="adam"', "seeds=-3", 'output_dir=""']:
        where = [] if o.startswith("output_dir") else ["--set", f"output_dir={json.dumps(str(tmp / 'ev'))}"]
        cases.append(("eval " + o, ["eval", "configs/eval/quickstart.toml", "--quiet", "--set", o, *where]))
    for o in SEARCH + ["search.population=1.5", "fitness.steps=true", 'search.mutations=["nope"]', "fitness.precompile=[0]",
              'fitness.precompile="2"']:
        cases.append(("search " + o, ["search", "configs/search/quickstart.toml", "--quiet", "--set", o,
                                      "--set", f"run.output_dir={json.dumps(str(tmp / 'se'))}"]))
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
    cases.append(("meta-train output under a file", ["meta-train", "configs/meta_train/quickstart.toml", "--quiet", "--set",
                  f"run.output_dir={json.dumps(str(tmp / 'blocker' / 'x'))}"]))
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
    for label, data in {"nested": b"[" * 100000 + b"]" * 100000, "not json": b"{", "array": b"[]",
                        "binary": b"\xff\xfe"}.items():
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
        cases.append(("eval learned arrays " + label, ["eval", "configs/eval/quickstart.toml", "--quiet", "--set",
                      f"learned=[{json.dumps(str(d))}]", "--set", f"output_dir={json.dumps(str(tmp / 'ev2'))}"]))
    # programs
    for label, text in {"syntax": "update = (g +", "unknown fn": "update = frob(g)", "huge const": "update = g * " + "1" * 1000000,
                        "no update": "m = g", "binary": None, "deep": "update = " + "(" * 5000 + "g" + ")" * 5000,
                        "undefined": "update = m", "empty": ""}.items():
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
    tracebacks = sum(why.startswith("traceback") for _, why in failures)
    print(f"bad inputs tried: {len(cases)}; clean one-line errors: {len(cases) - len(failures)}; "
          f"tracebacks: {tracebacks}; other: {len(failures) - tracebacks}")
    for label, why in failures:
        print(f" - {label}: {why}")
    if not (tmp / "plain" / "keep.txt").exists():
        print(" - program export --overwrite deleted a folder lopt did not write")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_sweep())

"""What every benchmark script writes at its end: a markdown table, the JSON behind it and a figure
in its output folder, the table printed, and the paths it wrote."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def write(out: Path, stem: str, lines: list[str], records: Any, figure: Callable[[Path], None]) -> None:
    """out/stem.md (the lines), out/stem.json (the records), out/stem.png (drawn by `figure`)."""
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(records, indent=2))
    figure(out / f"{stem}.png")
    print("\n".join(lines))
    print(f"wrote {out / f'{stem}.md'}, {out / f'{stem}.json'}, {out / f'{stem}.png'}")

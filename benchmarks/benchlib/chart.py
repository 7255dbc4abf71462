"""The chart: seconds per real-tool command for each filesystem and the local floor, one profile (a PNG)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from benchlib.results import Run

SERIES = (("rangefs", "rangefs"), ("rclone", "rclone (vfs-cache-mode full)"), ("httpdirfs", "httpdirfs"),
          ("local", "local file (floor)"))  # fmt: skip


def render(run: Run, profile: str, title: str, path: Path) -> str | None:
    """Write the chart to ``path``; None, or why it was not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (.venv/bin/pip install -e '.[bench]')"
    commands = [row.command for row in run.commands if row.filesystem == "local"]
    if not commands:
        return "no tools scenario in this run"
    seconds = {(row.filesystem, row.command): row.cold.seconds for row in run.commands
               if row.profile in (profile, "-") and row.cold.ok}  # fmt: skip
    width = 0.8 / len(SERIES)
    figure, axes = plt.subplots(figsize=(10, 4.8), layout="constrained")
    for number, (key, label) in enumerate(SERIES):
        found = [(index, seconds.get((key, command))) for index, command in enumerate(commands)]
        bars = [(index + (number - 1.5) * width, value) for index, value in found if value]
        axes.bar([x for x, _ in bars], [value for _, value in bars], width, label=label)
    axes.set_yscale("log")
    axes.set_ylabel("seconds, cold (log scale; missing bar: failed or not run)")
    axes.set_xticks(
        range(len(commands)), [textwrap.fill(command, 20, break_long_words=False) for command in commands], fontsize=8
    )
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(axis="y", which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None

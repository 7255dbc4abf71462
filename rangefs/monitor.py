"""``rangefs stats``: read a mount's statistics (the ``user.rangefs.stats`` xattr of its root), once or
every ``interval`` seconds, and show them as a table (statsview.py) or as JSON.

Watching ends with Ctrl-C (exit 0) or when the mount goes away: an unmounted directory has no such xattr
(ENODATA), a dead daemon leaves ENOTCONN; either is reported in one line, exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from rangefs import statsview
from rangefs.errors import UsageError

STATS_XATTR = "user.rangefs.stats"
# Columns of the table when it goes to a file or a pipe (rich would assume 80, and fold the numbers).
_PIPE_WIDTH = 160


def root_json(mountpoint: Path, name: str = STATS_XATTR) -> dict[str, object]:
    """A JSON xattr of the mount's root (statistics, the last reload), or a UsageError saying it is not (or no
    longer) a running rangefs mount."""
    try:
        raw = os.getxattr(mountpoint, name)
    except OSError as error:
        raise UsageError(f"{mountpoint} is not a running rangefs mount ({error.strerror})") from None
    return dict(json.loads(raw))


def sample(mountpoint: Path) -> statsview.Sample:
    """The mount's statistics now."""
    return statsview.Sample(root_json(mountpoint), time.monotonic())


def show(mountpoint: Path, *, watch: bool, interval: float, as_json: bool) -> int:
    if interval <= 0:
        raise UsageError("--interval must be positive")
    current = sample(mountpoint)
    if not watch:
        if as_json:
            print(json.dumps(current.stats, indent=2, sort_keys=True))
        else:
            _console().print(_view(None, current))
        return 0
    try:
        if as_json:
            _watch_json(mountpoint, current, interval)
        else:
            _watch_table(mountpoint, current, interval)
    except KeyboardInterrupt:
        return 0
    except UsageError as error:
        raise UsageError(f"stopped watching: {error}") from None
    return 0


def _watch_table(mountpoint: Path, current: statsview.Sample, interval: float) -> None:
    """Redrawn in place on a terminal; to a file or pipe, one table after the other."""
    console = _console()
    previous: statsview.Sample | None = None
    if not console.is_terminal:
        while True:  # until Ctrl-C or the mount goes away
            console.print(_view(previous, current), "")
            sys.stdout.flush()
            time.sleep(interval)
            previous, current = current, sample(mountpoint)
    with Live(_view(previous, current), console=console, auto_refresh=False) as live:
        while True:  # until Ctrl-C or the mount goes away
            time.sleep(interval)
            previous, current = current, sample(mountpoint)
            live.update(_view(previous, current), refresh=True)


def _watch_json(mountpoint: Path, current: statsview.Sample, interval: float) -> None:
    """One JSON object a line: what a script tails."""
    while True:  # until Ctrl-C or the mount goes away
        print(json.dumps(current.stats, sort_keys=True), flush=True)
        time.sleep(interval)
        current = sample(mountpoint)


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=_PIPE_WIDTH)


def _view(previous: statsview.Sample | None, current: statsview.Sample) -> Group:
    table = statsview.table(statsview.rows(previous, current))
    return Group(table, Text(statsview.summary(current.stats)))

"""Progress of ``rangefs get`` on stderr: a bar per file and one in total (bytes, rate, ETA), with rich.

Only on a terminal and without ``--quiet``; otherwise nothing is drawn (``NoProgress``). rich redraws from a
thread of its own; updates are plain method calls, safe from the trio thread.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """What the downloads tell about themselves; ``add`` gives a task number for the others."""

    def add(self, name: str) -> int: ...

    def started(self, task: int, size: int, done: int) -> None: ...

    def advance(self, task: int, count: int) -> None: ...

    def finished(self, task: int) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    """Draws nothing: stderr is not a terminal, or ``--quiet``."""

    def add(self, name: str) -> int:
        return 0

    def started(self, task: int, size: int, done: int) -> None:
        pass

    def advance(self, task: int, count: int) -> None:
        pass

    def finished(self, task: int) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class BarProgress:
    """rich bars on stderr: one per file and a total when there are several."""

    def __init__(self, files: int) -> None:
        # rich only when bars are drawn: the CLI's other commands do not pay for importing it.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._tasks: list[TaskID] = [self._progress.add_task("total", total=0, visible=files > 1)]
        self._total_size = 0

    def add(self, name: str) -> int:
        short = name if len(name) <= 40 else "..." + name[-37:]
        self._tasks.append(self._progress.add_task(short, total=None))
        return len(self._tasks) - 1

    def started(self, task: int, size: int, done: int) -> None:
        self._total_size += size
        self._progress.update(self._tasks[task], total=size, completed=done)
        self._progress.update(self._tasks[0], total=self._total_size, advance=done)

    def advance(self, task: int, count: int) -> None:
        self._progress.advance(self._tasks[task], count)
        self._progress.advance(self._tasks[0], count)

    def finished(self, task: int) -> None:
        self._progress.refresh()

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

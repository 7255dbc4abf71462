"""The tools scenario's tables: each command's cost at the origin through rangefs and the others, and
format-aware prefetch on and off."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from benchlib.results import CommandResult, CommandRun, MiB, Run

COMPETITORS = ("rclone", "httpdirfs")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _bytes(count: float) -> str:
    if count < MiB:
        return f"{count / 1024:.0f} KiB"
    return f"{count / MiB:.1f} MiB"


def _share(count: float, size: int) -> str:
    """Bytes and their share of the file size: ``1.2 MiB (2.6 %)``."""
    return f"{_bytes(count)} ({100 * count / size:.1f} %)" if size else _bytes(count)


def _seconds(run: CommandRun | None) -> str:
    if run is None:
        return ""
    if not run.ok or run.seconds is None:
        return run.status
    return f"{run.seconds:.2f}"


def _requests(run: CommandRun | None) -> str:
    return str(run.traffic.requests) if run is not None and run.traffic is not None else ""


def _sent(run: CommandRun, size: int) -> str:
    return _share(run.traffic.body_bytes, size) if run.traffic is not None else ""


def _find(run: Run, profile: str, filesystem: str, row: CommandResult) -> CommandResult | None:
    """The same command as ``row`` through ``filesystem`` under ``profile``."""
    wanted = (profile, filesystem, row.file_name, row.command)
    for found in run.commands:
        if (found.profile, found.filesystem, found.file_name, found.command) == wanted:
            return found
    return None


# --- the main table --------------------------------------------------------------------------------------


def commands_table(run: Run) -> str:
    """One row per profile and command: the local reference, rangefs cold and warm, the competitors."""
    competitors = [name for name in COMPETITORS if any(row.filesystem == name for row in run.commands)]
    header = ["profile", "file", "command", "local s (cold / warm)", "rangefs cold s", "requests"]
    header += ["nginx sent (of file)", "warm s (requests)"]
    header += [f"{name}: requests, sent, cold s" for name in competitors]
    rows = []
    for row in run.commands:
        if row.filesystem != "rangefs":
            continue
        local = _find(run, "-", "local", row)
        cells = [row.profile, f"{row.file_name} ({row.file_size / MiB:.0f} MiB)", f"`{row.command}`"]
        cells.append(f"{_seconds(local.cold)} / {_seconds(local.warm)}" if local else "")
        cells += [_seconds(row.cold), _requests(row.cold), _sent(row.cold, row.file_size), _warm(row.warm)]
        cells += [_competitor(_find(run, row.profile, name, row)) for name in competitors]
        rows.append(cells)
    return _table(header, rows)


def _warm(run: CommandRun | None) -> str:
    if run is None:
        return ""
    if not run.ok:
        return run.status
    return f"{_seconds(run)} ({_requests(run)})"


def _competitor(row: CommandResult | None) -> str:
    if row is None:
        return "not run"
    cold = row.cold
    if not cold.ok:
        return cold.status
    text = f"{_requests(cold)}, {_sent(cold, row.file_size)}, {_seconds(cold)} s"
    warm = row.warm
    if warm is not None and (not warm.ok or (warm.traffic is not None and warm.traffic.requests)):
        text += f"; warm: {_warm(warm)}"
    return text


# --- format-aware prefetch -------------------------------------------------------------------------------


def prefetch_table(run: Run) -> str:
    """Per command: prefetch on and off, the median time of the repeats and the requests of each."""
    header = ["profile", "file", "command", "rangefs", "runs", "seconds: median (min-max)", "requests per run"]
    header.append("nginx sent per run (median)")
    keys: list[tuple[str, str, str, str]] = []
    for row in run.prefetch:
        key = (row.profile, row.file_name, row.command, row.filesystem)
        if key not in keys:
            keys.append(key)
    rows = [_prefetch_row(key, [r for r in run.prefetch if (r.profile, r.file_name, r.command, r.filesystem) == key])
            for key in sorted(keys)]  # fmt: skip
    return _table(header, rows)


def _prefetch_row(key: tuple[str, str, str, str], runs: list[CommandResult]) -> list[str]:
    profile, file_name, command, filesystem = key
    setting = "prefetch off (`--no-format-prefetch`)" if "--no-format-prefetch" in filesystem else "default (prefetch)"
    good = [row.cold for row in runs if row.cold.ok and row.cold.seconds is not None]
    failed = [row.cold.status for row in runs if not row.cold.ok]
    times = [run.seconds for run in good if run.seconds is not None]
    timing = f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})" if times else ""
    requests = ", ".join(_requests(run) for run in good)
    sent = [run.traffic.body_bytes for run in good if run.traffic is not None]
    size = runs[0].file_size
    count = f"{len(good)}" + (f" ({len(failed)} failed: {failed[0]})" if failed else "")
    median_sent = _share(statistics.median(sent), size) if sent else ""
    return [profile, file_name, f"`{command}`", setting, count, timing, requests, median_sent]


# --- revalidation on open --------------------------------------------------------------------------------


def consistency_table(run: Run) -> str:
    """Per command and variant (opened at once, or late), the cold and the warm run: the median time of the
    repeats, the requests of each run and what they were."""
    header = ["profile", "file", "command", "opened", "run", "runs", "seconds: median (min-max)"]
    header += ["requests per run", "requests of all runs", "nginx sent per run (median)"]
    keys: list[tuple[str, str, str, str]] = []
    for row in run.consistency:
        key = (row.profile, row.file_name, row.command, row.variant)
        if key not in keys:
            keys.append(key)
    rows = []
    for key in keys:
        runs = [r for r in run.consistency if (r.profile, r.file_name, r.command, r.variant) == key]
        for which in ("cold", "warm"):
            taken = [r.cold if which == "cold" else r.warm for r in runs]
            steps = [step for step in taken if step is not None]
            profile, file_name, command, variant = key
            opened = variant if which == "cold" or variant == "at once" else variant.replace("mount", "the cold run")
            rows.append([profile, file_name, f"`{command}`", opened, which, *_repeated(steps, runs[0].file_size)])
    return _table(header, rows)


def _repeated(steps: list[CommandRun], size: int) -> list[str]:
    """Runs, median seconds (range), requests of each run, their kinds summed, median bytes sent."""
    good = [step for step in steps if step.ok and step.seconds is not None]
    failed = [step.status for step in steps if not step.ok]
    times = [step.seconds for step in good if step.seconds is not None]
    timing = f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})" if times else ""
    kinds: dict[str, int] = {}
    for step in good:
        for part in step.traffic.statuses.split(", ") if step.traffic and step.traffic.statuses else []:
            count, _, status = part.partition("x ")
            kinds[status] = kinds.get(status, 0) + int(count)
    sent = [step.traffic.body_bytes for step in good if step.traffic is not None]
    count = f"{len(good)}" + (f" ({len(failed)} failed: {failed[0]})" if failed else "")
    return [
        count,
        timing,
        ", ".join(_requests(step) for step in good),
        ", ".join(f"{number}x {status}" for status, number in sorted(kinds.items())),
        _share(statistics.median(sent), size) if sent else "",
    ]


def footer_lines(run: Run) -> list[str]:
    """How the tools scenario was measured, for the report's footer."""
    lines = [
        "- Tools scenario: files made by `benchmarks/makefiles.py` (the test suite's `tests/media.py`): "
        "archive.zip (`make_zip(3000)`), plain.mp4 (3.5 min H.264 at 5 Mbit/s, a keyframe every 2 s, moov at "
        "the end), items.sqlite (100,000 rows of 1,000 bytes), and for the extra commands fast.mp4 (faststart) "
        "and files.tar (120 members of 1 MiB); served by the same nginx from a `tools/` directory.",
        "- Every command runs on a fresh mount with a fresh cache directory, after drop_caches (cold), then once "
        "more in the same mount (warm: the kernel's page cache and the tool's cache). `unzip -p` writes the "
        "member to a scratch file; ffmpeg (`-ss 120 -frames:v 1`) and mpv (`--start=50% --frames=1 --vo=image`, "
        "no audio) write one frame as a PNG there; sqlite3 opens the file `immutable=1` and prints one row's "
        "payload by primary key.",
        "- Seconds: the command's wall time (process start included; compare with the local file's). Requests "
        "and bytes: nginx's access log for the file during the command (mount-time probes and directory "
        "listings are not counted); bytes are response bodies sent, and an aborted response counts what was "
        "sent before the abort, so a reader that opens long ranges and drops them can be charged more than the "
        "file. Each run's access-log lines are kept in `logs/*.chain`. Each output (stdout with the path "
        "replaced, plus the file written) is compared with the same command's on the local file; a difference "
        "shows as WRONG OUTPUT.",
        "- Local s: the same commands on the local file after drop_caches (cold), then again (warm).",
        "- Format-aware prefetch: `unzip -l` and `ffprobe` of plain.mp4 on a fresh mount and cache after "
        "drop_caches, rangefs by default and with `--no-format-prefetch`, alternating, each repeated; cold only.",
    ]
    if run.consistency:
        lines.append(
            "- Revalidation on open: `unzip -l` and `ffprobe` of plain.mp4, each on a fresh mount and cache after "
            "drop_caches, opened at once (cold, then warm straight after) or N s after the mount was ready (cold, "
            "then warm N s after the cold run), alternating, each repeated. rangefs revalidates (one HEAD) on an "
            "open that finds the file's metadata older than `--revalidate-after` (default 1 s); rangefs 0.1 "
            "trusted it for 300 s. The access log is read once after both runs and its requests split between "
            "them by start time."
        )
    return lines

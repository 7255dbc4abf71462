"""The headline: per profile, one row per scenario, what each filesystem took and what the origin served,
beside the floors (the local file, and the network without a filesystem)."""

from __future__ import annotations

from benchlib.origin import Traffic
from benchlib.results import CommandRun, LatencyStep, MiB, Run, Step

FILESYSTEMS = ("rangefs", "rclone", "httpdirfs")
HEADER = {"rangefs": "rangefs", "rclone": "rclone-full", "httpdirfs": "httpdirfs"}


def _cost(traffic: Traffic | None) -> str:
    if traffic is None:
        return ""
    return f" ({traffic.requests} / {traffic.body_bytes / MiB:.1f})"


def _timed(run: CommandRun | Step | None) -> str:
    if run is None:
        return "not run"
    if not run.ok or run.seconds is None:
        return run.status
    return f"{run.seconds:.2f}{_cost(run.traffic)}"


def _latency(step: LatencyStep | None) -> str:
    if step is None:
        return "not run"
    p50 = step.percentile(0.5)
    if not step.ok or p50 is None:
        return step.status
    return f"{p50:.1f} ms{_cost(step.traffic)}"


def _filesystems(run: Run, profile: str) -> list[str]:
    seen = {row.filesystem for row in run.commands if row.profile == profile}
    seen |= {result.tool for result in run.results if result.profile == profile}
    return [name for name in FILESYSTEMS if name in seen]


def table(run: Run, profile: str) -> str:
    """scenario | one column per filesystem | local floor | network floor. Cells: seconds (requests / MiB sent)."""
    names = _filesystems(run, profile)
    header = ["scenario", *(f"{HEADER[name]} s (requests / MiB)" for name in names), "local floor s", "network floor"]
    commands = [row.command for row in run.commands if row.filesystem == "local"]
    rows = [cells for command in commands if (cells := _command_row(run, profile, names, command)) is not None]
    if "random" in run.scenarios:
        rows.append(_random_row(run, profile, names))
    if "sequential" in run.scenarios:
        rows.append(_dd_row(run, profile, names))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _command_row(run: Run, profile: str, names: list[str], command: str) -> list[str] | None:
    found = {row.filesystem: row for row in run.commands if row.command == command and row.profile in (profile, "-")}
    if not any(name in found for name in names):
        return None
    local = found["local"]
    cells = [f"`{command}` ({local.file_name})"]
    cells += [_timed(found[name].cold) if name in found else "not run" for name in names]
    return [*cells, _timed(local.cold), ""]


def _random_row(run: Run, profile: str, names: list[str]) -> list[str]:
    cells = [f"random 4 KiB pread, p50 of {run.random_reads}"]
    cells += [_latency(found.random_cold if (found := run.find(profile, name)) else None) for name in names]
    floor = next((result.random_cold for result in run.network_floor if result.profile == profile), None)
    local = run.local.random_cold
    return [*cells, _latency(local), f"raw HTTP on one warm connection: {_latency(floor)}"]


def _dd_row(run: Run, profile: str, names: list[str]) -> list[str]:
    cells = [f"dd {run.size // MiB} MiB sequential"]
    cells += [_timed(_cold(run, profile, name)) for name in names]
    downloads = [f"{tool} {_timed(_cold(run, profile, tool))}" for tool in ("aria2c", "curl")]
    return [*cells, _timed(run.local.cold), ", ".join(downloads)]


def _cold(run: Run, profile: str, tool: str) -> Step | None:
    found = run.find(profile, tool)
    return found.cold if found is not None else None


def resources(run: Run, profile: str) -> str:
    """One line per FUSE daemon: CPU seconds and peak RSS of its processes during the cold dd."""
    lines = []
    for name in _filesystems(run, profile):
        found = run.find(profile, name)
        if found is None or found.cpu_seconds is None:
            continue
        rss = f"{found.rss_mib:.0f} MiB" if found.rss_mib is not None else "?"
        lines.append(
            f"- {name} daemon during the cold dd: {found.cpu_seconds:.2f} CPU-s, peak RSS {rss} "
            f"({found.processes or 1} process{'es' if (found.processes or 1) > 1 else ''})"
        )
    return "\n".join(lines)

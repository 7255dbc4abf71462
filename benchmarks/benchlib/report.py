"""The markdown report: one table per scenario, rangefs's targets, notes and how the numbers were made."""

from __future__ import annotations

from collections.abc import Sequence

from benchlib import summary, toolsreport
from benchlib.origin import Profile
from benchlib.results import LatencyStep, MiB, Run, Step, ToolResult


def render(run: Run) -> str:
    parts = [f"# rangefs benchmark: {_subject(run)}, profiles {', '.join(p.name for p in run.profiles)}"]
    for profile in run.profiles:
        parts.append(_summary(run, profile))
    if "sequential" in run.scenarios:
        parts += ["## Cold sequential read\n\n" + cold_table(run), "## Warm re-read\n\n" + warm_table(run)]
    if "random" in run.scenarios:
        parts.append(
            f"## Random 4 KiB reads ({run.random_reads} reads, each in its own 1 MiB block)\n\n" + random_table(run)
        )
    if _throughput(run):
        parts.append("## rangefs targets\n\n" + targets_table(run))
    if "tools" in run.scenarios:
        parts.append(
            "## Real tools (cold: fresh mount and cache after drop_caches; warm: the same command again)\n\n"
            + toolsreport.commands_table(run)
        )
    if run.prefetch:
        parts.append("## Format-aware prefetch on the first open\n\n" + toolsreport.prefetch_table(run))
    if run.consistency:
        parts.append("## Revalidation on open: opened at once and later\n\n" + toolsreport.consistency_table(run))
    if run.profile_summary:
        parts.append("## Where rangefs spends its time (py-spy, loopback cold read)\n\n" + run.profile_summary)
    if run.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {note}" for note in run.notes))
    parts.append("## How this was measured\n\n" + footer(run))
    return "\n\n".join(parts) + "\n"


def describe_profile(profile: Profile) -> str:
    secure = ", HTTPS (a certificate made for the run, which every client verifies)" if profile.tls else ""
    if not profile.namespaced:
        return f"{profile.name} (nginx on 127.0.0.1, no delay, no limit{secure})"
    rate = f", nginx `limit_rate {profile.rate}` per connection" if profile.rate else ""
    return f"{profile.name} ({profile.rtt_ms} ms RTT through a network namespace{rate}{secure})"


def _summary(run: Run, profile: Profile) -> str:
    text = (
        f"## Summary: {describe_profile(profile)}\n\nCold caches every time (a fresh mount and cache directory, "
        "then drop_caches). Cells: seconds (requests / MiB the origin sent for the file, from nginx's access log). "
        "Local floor: the same command on the local file after drop_caches. Network floor: the same reads "
        "without a filesystem.\n\n" + summary.table(run, profile.name)
    )
    used = summary.resources(run, profile.name)
    if used:
        text += "\n\n" + used
    if run.chart and run.chart[0] == profile.name:
        text += f"\n\nChart of the tools rows: `{run.chart[1]}`"
    return text


def _throughput(run: Run) -> bool:
    """Whether the run read the big test file (the sequential or random scenarios)."""
    return "sequential" in run.scenarios or "random" in run.scenarios


def _subject(run: Run) -> str:
    parts = [f"{_size(run.size)} file"] if _throughput(run) else []
    if "tools" in run.scenarios:
        parts.append("real tools")
    return " and ".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return ""
    return f"{value / reference:.2f}x"


def _size(size: int) -> str:
    return f"{size / MiB:g} MiB"


def _status(step: Step | LatencyStep | None) -> str:
    if step is None:
        return "not run"
    return step.status


# --- cold ------------------------------------------------------------------------------------------------


def cold_table(run: Run) -> str:
    header = ["profile", "tool", "result", "seconds", "MiB/s", "vs curl", "nginx requests", "connections"]
    header += ["nginx bytes / size", "peak RSS MiB", "CPU s", "requests by kind"]
    rows = [_cold_row(run, result) for result in run.results]
    return _table(header, rows)


def _cold_row(run: Run, result: ToolResult) -> list[str]:
    cold = result.cold
    curl = run.find(result.profile, "curl")
    speed = cold.mib_per_s(run.size)
    curl_speed = curl.cold.mib_per_s(run.size) if curl else None
    traffic = cold.traffic
    details = traffic.statuses if traffic else ""
    if result.reported_requests is not None:
        details += f"; rangefs stats: {result.reported_requests} requests"
    if result.verified and result.verified != "ok":
        details += f"; data: {result.verified}"
    return [
        result.profile,
        result.tool,
        cold.status,
        _num(cold.seconds) if cold.ok else "",
        _num(speed, 1),
        _ratio(speed, curl_speed),
        str(traffic.requests) if traffic else "",
        str(traffic.connections) if traffic else "",
        f"{traffic.body_bytes / run.size:.3f}" if traffic else "",
        _num(result.rss_mib, 0),
        _num(result.cpu_seconds),
        details,
    ]


# --- warm ------------------------------------------------------------------------------------------------


def warm_table(run: Run) -> str:
    header = ["profile", "tool", "page cache s", "MiB/s", "vs local page cache", "disk cache s", "MiB/s"]
    header += ["vs local disk", "nginx requests (page / disk)", "daemon served (page)", "data check"]
    local = run.local
    rows = [
        [
            "-",
            "local file",
            _num(local.warm.seconds, 3) if local.warm.ok else local.warm.status,
            _num(local.warm.mib_per_s(run.size), 0),
            "1.00x",
            _num(local.cold.seconds, 3) if local.cold.ok else local.cold.status,
            _num(local.cold.mib_per_s(run.size), 0),
            "1.00x",
            "",
            "",
            "",
        ]
    ]
    rows += [_warm_row(run, result) for result in run.results if result.warm is not None or result.disk is not None]
    return _table(header, rows)


def _warm_row(run: Run, result: ToolResult) -> list[str]:
    warm, disk = result.warm, result.disk
    warm_speed = warm.mib_per_s(run.size) if warm else None
    disk_speed = disk.mib_per_s(run.size) if disk else None
    requests = "/".join(str(step.traffic.requests) if step and step.traffic else "-" for step in (warm, disk))
    return [
        result.profile,
        result.tool,
        _num(warm.seconds, 3) if warm and warm.ok else _status(warm),
        _num(warm_speed, 0),
        _ratio(warm_speed, run.local.warm.mib_per_s(run.size)),
        _num(disk.seconds, 3) if disk and disk.ok else _status(disk),
        _num(disk_speed, 0),
        _ratio(disk_speed, run.local.cold.mib_per_s(run.size)),
        requests,
        "" if result.warm_daemon_bytes is None else _size(result.warm_daemon_bytes),
        result.verified or "",
    ]


# --- random ----------------------------------------------------------------------------------------------


def random_table(run: Run) -> str:
    header = ["profile", "tool", "cold p50 ms", "cold p99 ms", "cold requests", "per read", "nginx bytes / read"]
    header += ["warm p50 ms", "warm p99 ms", "warm requests", "data (cold / warm)"]
    local = ToolResult("-", "local file", random_cold=run.local.random_cold, random_warm=run.local.random_warm)
    results = [local, *run.network_floor, *run.results]
    rows = [_random_row(result) for result in results if result.random_cold is not None]
    return _table(header, rows)


def _random_row(result: ToolResult) -> list[str]:
    cold, warm = result.random_cold, result.random_warm
    assert cold is not None
    row = [result.profile, result.tool]
    if cold.ok:
        row += [_num(cold.percentile(0.5)), _num(cold.percentile(0.99))]
    else:
        row += [cold.status, ""]
    row += [_requests(cold), _num(cold.requests_per_read()), _bytes_per_read(cold)]
    if warm is not None and warm.ok:
        row += [_num(warm.percentile(0.5), 3), _num(warm.percentile(0.99), 3), _requests(warm)]
    else:
        row += [_status(warm), "", ""]
    row.append(" / ".join(_data_check(step) for step in (cold, warm)))
    return row


def _data_check(step: LatencyStep | None) -> str:
    if step is None or step.mismatches is None:
        return "-"
    if step.mismatches:
        return f"**{step.mismatches} WRONG**"
    return "ok"


def _requests(step: LatencyStep) -> str:
    return str(step.traffic.requests) if step.traffic else ""


def _bytes_per_read(step: LatencyStep) -> str:
    if step.traffic is None or not step.latencies_ms:
        return ""
    return f"{step.traffic.body_bytes / len(step.latencies_ms) / 1024:.0f} KiB"


# --- targets ---------------------------------------------------------------------------------------------


Check = tuple[str, str, str, bool | None]  # what, target, measured, passed (None: could not tell)


def targets_table(run: Run) -> str:
    checks: list[Check] = []
    for profile in run.profiles:
        checks += _targets_for(run, profile)
    if not checks:
        return "rangefs was not part of this run."
    rows = [[what, target, measured, _verdict(passed)] for what, target, measured, passed in checks]
    return _table(["target", "wanted", "measured", "verdict"], rows)


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "**MISS**")


def _targets_for(run: Run, where: Profile) -> list[Check]:
    profile = where.name
    rangefs = run.find(profile, "rangefs")
    if rangefs is None:
        return []
    checks: list[Check] = []
    if "sequential" in run.scenarios:
        speed = rangefs.cold.mib_per_s(run.size)
        if where.rate:  # one throttled connection is slow: a filesystem should fetch over several
            checks.append(_speed_check(run, profile, speed, "curl", 4.0))
        if where.namespaced:
            checks.append(_speed_check(run, profile, speed, "aria2c", 0.9))
        else:
            checks.append(_speed_check(run, profile, speed, "curl", 0.7))
    if "random" in run.scenarios:
        checks += _random_checks(profile, where.rtt_ms, rangefs)
    if "sequential" in run.scenarios:
        checks += _warm_checks(run, profile, rangefs)
        rss = rangefs.rss_mib
        checks.append(
            (f"{profile}: peak RSS of the daemon", "<= 300 MiB", _num(rss, 0), None if rss is None else rss <= 300)
        )
    return checks


def _speed_check(run: Run, profile: str, speed: float | None, other: str, factor: float) -> Check:
    competitor = run.find(profile, other)
    reference = competitor.cold.mib_per_s(run.size) if competitor else None
    measured = _ratio(speed, reference) or "missing"
    passed = None if speed is None or not reference else speed >= factor * reference
    return (f"{profile}: cold sequential vs {other}", f">= {factor:g}x", measured, passed)


def _random_checks(profile: str, rtt: float, rangefs: ToolResult) -> list[Check]:
    cold = rangefs.random_cold
    if cold is None or not cold.ok:
        return [(f"{profile}: cold random 4 KiB read", "1 request, p50 <= RTT + 5 ms", _status(cold), None)]
    per_read = cold.requests_per_read()
    p50 = cold.percentile(0.5)
    return [
        (
            f"{profile}: requests per cold random read",
            "1",
            _num(per_read),
            None if per_read is None else per_read <= 1.0,
        ),
        (
            f"{profile}: cold random read p50",
            f"<= {rtt + 5:g} ms",
            f"{_num(p50)} ms",
            None if p50 is None else p50 <= rtt + 5,
        ),
    ]


def _warm_checks(run: Run, profile: str, rangefs: ToolResult) -> list[Check]:
    checks: list[Check] = []
    pairs: list[tuple[str, Step | None, Step]] = [
        ("page-cache re-read vs local page cache", rangefs.warm, run.local.warm),
        ("disk-cache re-read vs local disk read", rangefs.disk, run.local.cold),
    ]
    for what, step, local in pairs:
        speed = step.mib_per_s(run.size) if step else None
        reference = local.mib_per_s(run.size)
        passed = None if speed is None or not reference else speed >= 0.8 * reference
        checks.append((f"{profile}: {what}", ">= 0.8x", _ratio(speed, reference) or _status(step), passed))
    return checks


# --- footer ----------------------------------------------------------------------------------------------


def footer(run: Run) -> str:
    lines = [
        "- Origin: one nginx per profile with ETag, Last-Modified and range support (nginx defaults), "
        "`sendfile on`, keep-alive.",
        "- Profiles: " + "; ".join(f"**{describe_profile(profile)}**" for profile in run.profiles) + ". "
        "A profile with a round-trip time runs its nginx inside a network namespace made by "
        "`../shared/netem/netns.sh` (veth pair; every packet arriving inside is held for the RTT by an NFQUEUE "
        "program, then accepted), and the clients on the host connect to 10.77.X.2: the kernel's own TCP runs "
        "end to end, so connection set-up, slow start and the window after idle cost what they cost on a real "
        "link. A throttled profile adds `sendfile_max_chunk 64k;` (nginx paces a connection after each sendfile "
        "chunk; with the default 2 MiB chunks the last 2 MiB of every response would escape the limit).",
    ]
    if _throughput(run):
        lines += _throughput_lines(run)
    if "tools" in run.scenarios:
        lines += toolsreport.footer_lines(run)
    lines += [f"- {key}: {value}" for key, value in run.environment.items()]
    lines.append("- Versions: " + "; ".join(f"{tool}: {text}" for tool, text in run.versions.items()))
    return "\n".join(lines)


def _throughput_lines(run: Run) -> list[str]:
    return [
        f"- File: {_size(run.size)} of random (incompressible) bytes.",
        "- Tools: curl and aria2c download; rangefs (`--foreground`, default settings), `rclone mount :http: "
        "--vfs-cache-mode full` and `httpdirfs -f --cache --no-range-check` (httpdirfs 1.2's own range check "
        "rejects nginx and exits on the first read) are FUSE mounts read with `dd`.",
        "- Cold: a fresh cache directory and a fresh mount, then `sync; echo 3 > /proc/sys/vm/drop_caches`, then "
        "`dd if=FILE of=/dev/null bs=1M` through the mount (curl: `curl -o /dev/null`; aria2c: `-x8 -s8 -k1M "
        "--file-allocation=none` to a scratch directory, deleted afterwards). Seconds are the reading command's "
        "wall time; mounting is not included. nginx's own reads come from disk after the drop, for every tool.",
        "- nginx requests / bytes: from nginx's access log, requests for the file during the read only "
        "(directory listings and mount-time probes are not counted); bytes are response bodies sent "
        "(an aborted response counts what was sent before the abort). Connections: distinct nginx connections.",
        "- Warm: `dd` again in the same mount (page cache; the median of 3 reads), compared with `dd` of the local "
        "file from the page cache (also the median of 3); daemon served: bytes rangefs itself served meanwhile. "
        "Disk cache: unmount, drop_caches, remount on the same cache directory, `dd`; compared with `dd` of the "
        "local file after drop_caches. Data check: `cmp` of the mounted file with the local file.",
        f"- Random: `benchmarks/randread.py`: {run.random_reads} `pread`s of 4 KiB at seeded random 4 KiB-aligned "
        "offsets, each in a distinct 1 MiB block, on a fresh mount and cache after drop_caches (cold), then the "
        "same offsets again (warm); each read is checked against the local file. The local file row: the same "
        "reads of the local file, after drop_caches and again. The raw HTTP row: the same reads as serial "
        "range requests on one kept-alive connection (Python's http.client), warmed by one untimed request "
        "(counted in its requests), after drop_caches: the network's floor for a random read.",
        "- CPU s: user + system CPU time of the downloader, or of the FUSE daemon's processes (the one we started "
        "and its descendants), during the cold read (not the kernel's FUSE work on the reader's side).",
        "- Peak RSS: the largest sum of VmRSS over the FUSE daemon's processes (polled every 0.1 s), or the main "
        "process's VmHWM if larger, during the cold sequential read; the daemon's PID comes from the process we "
        "started (rangefs: its `--pid-file`).",
    ]


def summarize_collapsed(text: str, top: int = 15) -> str:
    """Top functions by own and by total samples, and own samples per source file, from py-spy's raw output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    files: dict[str, int] = {}
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(_IDLE_LEAF):
            continue
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        source = _source_file(frames[-1])
        files[source] = files.get(source, 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    if not samples:
        return "py-spy recorded no samples."
    # Frames on (nearly) every stack, such as main() and trio's run loop, say nothing: leave them out.
    total = {frame: count for frame, count in total.items() if count < 0.9 * samples}

    def rows(counts: dict[str, int], limit: int) -> list[list[str]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:limit]
        return [[f"{count / samples:.1%}", f"`{frame}`"] for frame, count in ranked]

    return (
        f"{samples} samples of busy threads (py-spy `--nonblocking`, 200 Hz; idle trio worker threads left out; "
        "this run's loopback rangefs numbers include py-spy's overhead).\n\nOwn time by source file:\n\n"
        + _table(["share", "file"], rows(files, 10))
        + "\n\nOwn time by function:\n\n"
        + _table(["share", "function"], rows(own, top))
        + "\n\nTotal time (the function and what it calls; frames on 90 % or more of the stacks left out):\n\n"
        + _table(["share", "function"], rows(total, top))
    )


# A trio worker thread waiting for a job (a lock acquire with a timeout): py-spy does not see it as idle.
_IDLE_LEAF = "WorkerThread._work (trio/_core/_thread_cache.py"


def _source_file(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``path/to/file.py``."""
    inside = frame.rpartition("(")[2].rstrip(")")
    return inside.rpartition(":")[0] or frame

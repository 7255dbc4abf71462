"""What one benchmark run measured: plain data, filled in by scenarios.py and rendered by report.py."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from benchlib.origin import Profile, Traffic

MiB = 1024 * 1024


@dataclass
class Step:
    """One timed read of the whole file; ``status`` is "ok" or why there is no number."""

    status: str = "ok"
    seconds: float | None = None
    traffic: Traffic | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.seconds is not None

    def mib_per_s(self, size: int) -> float | None:
        if not self.ok or not self.seconds:
            return None
        return size / MiB / self.seconds


@dataclass
class LatencyStep:
    """Timed 4 KiB reads at random offsets."""

    status: str = "ok"
    latencies_ms: list[float] = field(default_factory=list)
    traffic: Traffic | None = None
    mismatches: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.latencies_ms)

    def percentile(self, fraction: float) -> float | None:
        if not self.latencies_ms:
            return None
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        cuts = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
        return cuts[round(fraction * 100) - 1]

    def requests_per_read(self) -> float | None:
        if self.traffic is None or not self.latencies_ms:
            return None
        return self.traffic.requests / len(self.latencies_ms)


@dataclass
class ToolResult:
    """Everything measured for one tool under one network profile."""

    profile: str
    tool: str
    cold: Step = field(default_factory=Step)
    warm: Step | None = None  # re-reads in the same mount (the page cache): the median
    disk: Step | None = None  # re-read after unmount, drop_caches and remount: the tool's disk cache
    rss_mib: float | None = None  # peak of the daemon's processes' summed resident memory
    cpu_seconds: float | None = None  # CPU time of the downloader, or of the FUSE daemon's processes, cold read
    processes: int | None = None  # most processes the FUSE daemon had at once during the cold read
    reported_requests: int | None = None  # what the tool itself counted (rangefs stats)
    warm_daemon_bytes: int | None = None  # bytes the daemon served during the warm reads (rangefs stats)
    verified: str | None = None  # "ok", or what differed from the local file
    random_cold: LatencyStep | None = None
    random_warm: LatencyStep | None = None


@dataclass
class LocalBaseline:
    """The same reads of the local file: from disk after drop_caches, then from the page cache."""

    cold: Step = field(default_factory=Step)
    warm: Step = field(default_factory=Step)
    random_cold: LatencyStep | None = None
    random_warm: LatencyStep | None = None


@dataclass
class CommandRun:
    """One run of a real tool's command (unzip -l, ffprobe, ...) on a file; ``status`` is "ok" or what failed."""

    status: str = "ok"
    seconds: float | None = None
    traffic: Traffic | None = None
    output: str | None = None  # digest of what the command printed and wrote, paths replaced: compared with local

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.seconds is not None


@dataclass
class CommandResult:
    """One command of the tools scenario through one filesystem under one profile: cold, then warm."""

    profile: str  # "-" for the local file
    filesystem: str  # "local", "rangefs", "rangefs --no-format-prefetch", "rclone", "httpdirfs"
    file_name: str
    file_size: int
    command: str  # as shown in the table, e.g. "unzip -l"
    cold: CommandRun = field(default_factory=CommandRun)
    variant: str = ""  # what else sets the run apart (the consistency runs: when the command ran after mounting)
    warm: CommandRun | None = None  # the same command again in the same mount


@dataclass
class Run:
    """A whole benchmark run, with what the footer needs to say about it."""

    size: int
    profiles: list[Profile]
    random_reads: int
    scenarios: list[str] = field(default_factory=lambda: ["sequential", "random"])
    local: LocalBaseline = field(default_factory=LocalBaseline)
    results: list[ToolResult] = field(default_factory=list)
    network_floor: list[ToolResult] = field(default_factory=list)  # raw HTTP random reads, per profile
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    profile_summary: str | None = None
    chart: tuple[str, str] | None = None  # (profile, path) of the chart of the tools scenario
    commands: list[CommandResult] = field(default_factory=list)  # the tools scenario
    prefetch: list[CommandResult] = field(default_factory=list)  # format-aware prefetch on and off, repeated
    consistency: list[CommandResult] = field(default_factory=list)  # opened at once and late after mounting

    def find(self, profile: str, tool: str) -> ToolResult | None:
        for result in self.results:
            if result.profile == profile and result.tool == tool:
                return result
        return None

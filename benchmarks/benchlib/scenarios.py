"""The measurements: cold and warm sequential reads, disk-cache re-reads, random 4 KiB reads, peak RSS.

Every mount is made by a child process whose PID we own, unmounted in a ``finally`` and its daemon ended by
that PID; every read runs in a child process with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import procs, tools
from benchlib.origin import AccessLog, Origin, Profile
from benchlib.results import LatencyStep, LocalBaseline, Step, ToolResult

# Warm reads are short and the machine is shared: each is the median of this many reads.
WARM_REPEATS = 3
# Seconds a FUSE daemon gets to exit by itself once its mount is gone, before it is sent SIGTERM.
EXIT_GRACE = 10.0
_DD_BYTES = re.compile(r"^(\d+) bytes", re.MULTILINE)
_LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|FATAL)\b|Traceback|panic:|crashed|Segmentation", re.IGNORECASE)


@dataclass
class Timeouts:
    """Seconds each kind of step may take before it is reported as a timeout."""

    mount: float = 60.0
    read: float = 240.0
    random: float = 150.0


@dataclass
class Bench:
    """What every scenario needs: the served file, the log that counts requests, and where to put things."""

    work: Path
    logs: Path
    data_file: Path
    size: int
    timeouts: Timeouts
    random_reads: int
    seed: int
    can_drop_caches: bool
    rangefs_args: list[str] = field(default_factory=list)
    rangefs_source: Path | None = None  # run rangefs from this checkout (None: the one the venv imports)
    py_spy: Path | None = None  # record rangefs's cold read here (py-spy raw format)
    py_spy_profile: str = ""  # ... under this profile
    notes: list[str] = field(default_factory=list)
    scenarios: frozenset[str] = frozenset({"sequential", "random"})
    _noted: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def uri(self) -> str:
        return "/" + self.data_file.name

    def drop_caches(self) -> None:
        if self.can_drop_caches:
            procs.drop_caches()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def note_once(self, key: str, text: str) -> None:
        """A note for ``key`` unless one was made already (the same warning in the logs of many mounts)."""
        if key not in self._noted:
            self._noted.add(key)
            self.note(text)


class MountFailed(Exception):
    pass


@dataclass
class Mounted:
    spec: tools.MountSpec
    child: subprocess.Popen[bytes]
    pid: int


# --- single reads ----------------------------------------------------------------------------------------


def timed_read(path: Path, size: int, timeout: float) -> Step:
    """``dd if=PATH of=/dev/null bs=1M``, wall-clock timed; a short read is a failure."""
    done = procs.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], timeout)
    if not done.ok:
        return Step(status=done.problem(), seconds=done.seconds)
    match = _DD_BYTES.search(done.stderr)
    copied = int(match.group(1)) if match else -1
    if copied != size:
        return Step(status=f"short read ({copied} of {size} bytes)", seconds=done.seconds)
    return Step(seconds=done.seconds)


def repeated_read(path: Path, size: int, timeout: float, times: int = WARM_REPEATS) -> Step:
    """``times`` reads of a file that should be cached; the median time (the first failure, if any)."""
    seconds = []
    for _ in range(times):
        step = timed_read(path, size, timeout)
        if not step.ok or step.seconds is None:
            return step
        seconds.append(step.seconds)
    return Step(seconds=statistics.median(seconds))


def random_reads(bench: Bench, source: Path | str, label: str, *, ca_bundle: Path | None = None) -> LatencyStep:
    """benchmarks/randread.py in a child process on a file (or a URL, of an HTTPS origin whose CA is
    ``ca_bundle``); each read is compared with the local file."""
    script = Path(__file__).resolve().parent.parent / "randread.py"
    argv = [sys.executable, str(script), str(source), "--seed", str(bench.seed), "--count", str(bench.random_reads)]
    argv += ["--ca-bundle", str(ca_bundle)] if ca_bundle else []
    argv += ["--size", str(bench.size), "--verify", str(bench.data_file)]
    done = procs.run(argv, bench.timeouts.random)
    if not done.ok:
        return LatencyStep(status=done.problem())
    result = json.loads(done.stdout)
    step = LatencyStep(latencies_ms=result["latencies_ms"], mismatches=result["mismatches"])
    if step.mismatches:
        bench.note(f"{label}: WRONG DATA in {step.mismatches} random reads; offset: problem: {result['wrong']}")
    return step


def compare(path: Path, reference: Path, timeout: float) -> str:
    done = procs.run(["cmp", str(path), str(reference)], timeout)
    if done.ok:
        return "ok"
    if done.returncode == 1:
        return "DIFFERS: " + done.stdout.strip()[:80]
    return done.problem()


# --- baselines -------------------------------------------------------------------------------------------


def local_baseline(bench: Bench) -> LocalBaseline:
    """The local file read after drop_caches, then again from the page cache; the same for random reads."""
    baseline = LocalBaseline()
    if "sequential" in bench.scenarios:
        bench.drop_caches()
        baseline.cold = timed_read(bench.data_file, bench.size, bench.timeouts.read)
        baseline.warm = repeated_read(bench.data_file, bench.size, bench.timeouts.read)
    if "random" in bench.scenarios:
        bench.drop_caches()
        baseline.random_cold = random_reads(bench, bench.data_file, "local file cold")
        baseline.random_warm = random_reads(bench, bench.data_file, "local file warm")
    return baseline


RAW_HTTP = "raw HTTP, one warm connection"


def raw_http_random(bench: Bench, origin: Origin) -> ToolResult:
    """The network's floor for the random reads: the same reads as serial range requests on one kept-alive,
    already used connection (randread.py given the URL), after drop_caches."""
    result = ToolResult(origin.profile.name, RAW_HTTP)
    bench.drop_caches()
    mark = origin.access.mark()
    result.random_cold = random_reads(
        bench, origin.base_url + bench.data_file.name, f"{RAW_HTTP} cold", ca_bundle=origin.ca_bundle
    )
    result.random_cold.traffic = origin.access.traffic_since(mark, bench.uri)
    return result


def download(bench: Bench, case: Case) -> ToolResult:
    """A cold download with curl or aria2c; aria2c's output file is deleted afterwards."""
    tool, url, access = case.tool, case.base_url + bench.data_file.name, case.access
    result = ToolResult(case.profile.name, tool)
    scratch = bench.work / f"{case.label}-download"
    scratch.mkdir()
    try:
        bench.drop_caches()
        mark = access.mark()
        done = procs.run(tools.download_argv(tool, url, scratch, case.ca_bundle), bench.timeouts.read)
        result.cold = Step(seconds=done.seconds) if done.ok else Step(status=done.problem(), seconds=done.seconds)
        result.cpu_seconds = done.cpu_seconds
        result.cold.traffic = access.traffic_since(mark, bench.uri)
        if done.ok and tool == "aria2c":
            result.verified = compare(scratch / bench.data_file.name, bench.data_file, bench.timeouts.read)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


# --- FUSE mounts -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(bench: Bench, spec: tools.MountSpec, size: int | None = None) -> Iterator[Mounted]:
    """Mount with ``spec`` and wait until the file is visible at its full size (``size``, by default the
    benchmark file's); always unmounted afterwards."""
    spec.mountpoint.mkdir(parents=True, exist_ok=True)
    spec.cache_dir.mkdir(parents=True, exist_ok=True)  # httpdirfs does not create it
    try:
        with procs.started(spec.argv, spec.output, env=spec.env) as child:
            try:
                pid = _wait_ready(bench, spec, child, bench.size if size is None else size)
                yield Mounted(spec, child, pid)
            finally:
                if child.poll() is not None:
                    bench.note(f"{spec.tool}: the daemon of {spec.mountpoint.name} died (exit {child.returncode})")
                problem = procs.unmount(spec.mountpoint)
                if problem:
                    bench.note(f"{spec.tool}: {spec.mountpoint}: {problem}")
                elif not procs.wait_exit(child, EXIT_GRACE):
                    # Unmounted: the daemon should exit by itself; procs.started's SIGTERM is the fallback.
                    bench.note_once(
                        f"{spec.tool}: still running", f"{spec.tool}: a daemon still ran {EXIT_GRACE:g} s after unmount"
                    )
    finally:
        _check_logs(bench, spec)


def _wait_ready(bench: Bench, spec: tools.MountSpec, child: subprocess.Popen[bytes], size: int) -> int:
    problem = procs.wait_mounted(spec.mountpoint, child, bench.timeouts.mount)
    if problem:
        raise MountFailed(f"mount failed: {problem}")
    ready_text = spec.ready_text
    if spec.log_file and ready_text and not procs.wait_for_text(spec.log_file, ready_text, child, bench.timeouts.mount):
        raise MountFailed("mount failed: no 'mounted' line in the log")
    pid = child.pid
    if spec.pid_file:
        pid = procs.read_pid_file(spec.pid_file, timeout=10) or child.pid
        if pid != child.pid:
            bench.note(f"{spec.tool}: pid file says {pid}, the child we started is {child.pid}")
    seen = procs.run(["stat", "--format=%s", str(spec.file_path)], bench.timeouts.mount)
    if not seen.ok:
        raise MountFailed(f"file not visible: {seen.problem()}")
    if seen.stdout.strip() != str(size):
        raise MountFailed(f"file size {seen.stdout.strip()} instead of {size}")
    return pid


def _check_logs(bench: Bench, spec: tools.MountSpec) -> None:
    """Add a note for each distinct warning, error or traceback a tool logged."""
    for path in (spec.log_file, spec.output):
        if path is None or not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if _LOG_PROBLEM.search(line):
                text = re.sub(r"^\S+ \S+ ", "", line.strip())[:200]  # drop the timestamp so repeats collapse
                bench.note_once(f"{spec.tool}: {text}", f"{spec.tool} log ({path.name}): {text}")


@dataclass(frozen=True)
class Case:
    """One tool reading from one profile's origin."""

    origin: Origin
    tool: str

    @property
    def profile(self) -> Profile:
        return self.origin.profile

    @property
    def base_url(self) -> str:
        """The URL of the served directory."""
        return self.origin.base_url

    @property
    def access(self) -> AccessLog:
        return self.origin.access

    @property
    def ca_bundle(self) -> Path | None:
        """The CA to trust for an HTTPS origin (None: plain HTTP)."""
        return self.origin.ca_bundle

    @property
    def label(self) -> str:
        return f"{self.tool}-{self.profile.name}"


def fuse(bench: Bench, case: Case) -> ToolResult:
    """Cold, warm and disk-cache sequential reads, then cold and warm random reads, each on its own mount (the
    ones of the chosen scenarios)."""
    result = ToolResult(case.profile.name, case.tool)
    caches = [bench.work / f"{case.label}-cache-seq", bench.work / f"{case.label}-cache-random"]
    try:
        if "sequential" in bench.scenarios:
            try:
                _sequential(bench, case, caches[0], result)
            except MountFailed as error:
                result.cold = Step(status=str(error))
            if result.cold.ok:
                _disk_cache(bench, case, caches[0], result)
        if "random" in bench.scenarios:
            try:
                _random(bench, case, caches[1], result)
            except MountFailed as error:
                result.random_cold = LatencyStep(status=str(error))
    finally:
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
    return result


def _spec(bench: Bench, case: Case, cache: Path, phase: str) -> tools.MountSpec:
    label = f"{case.label}-{phase}"
    extra = bench.rangefs_args if case.tool == "rangefs" else []
    return tools.mount_spec(
        case.tool,
        base_url=case.base_url,
        file_name=bench.data_file.name,
        mountpoint=bench.work / "mnt" / label,
        cache_dir=cache,
        logs=bench.logs,
        label=label,
        extra_args=extra,
        rangefs_source=bench.rangefs_source,
        ca_bundle=case.ca_bundle,
    )


def _sequential(bench: Bench, case: Case, cache: Path, result: ToolResult) -> None:
    spec = _spec(bench, case, cache, "seq")
    tool, profile = case.tool, case.profile
    with mounted(bench, spec) as mount:
        bench.drop_caches()
        mark = case.access.mark()
        record = bench.py_spy if tool == "rangefs" and profile.name == bench.py_spy_profile else None
        with procs.RssMonitor(mount.pid) as rss, _py_spy(bench, mount.pid, record):
            result.cold = timed_read(spec.file_path, bench.size, bench.timeouts.read)
        result.rss_mib = rss.peak_mib
        result.cpu_seconds = rss.cpu_seconds
        result.processes = rss.processes
        result.cold.traffic = case.access.traffic_since(mark, bench.uri)
        before = _rangefs_stats(bench, spec.mountpoint, f"{profile.name}-cold") if tool == "rangefs" else None
        result.reported_requests = _number(before, "http", "requests")
        if not result.cold.ok:
            return
        mark = case.access.mark()
        result.warm = repeated_read(spec.file_path, bench.size, bench.timeouts.read)
        result.warm.traffic = case.access.traffic_since(mark, bench.uri)
        if before is not None:
            after = _rangefs_stats(bench, spec.mountpoint, f"{profile.name}-warm")
            served = [_number(stats, "blocks", "bytes_served") for stats in (before, after)]
            if served[0] is not None and served[1] is not None:
                result.warm_daemon_bytes = served[1] - served[0]
        result.verified = compare(spec.file_path, bench.data_file, bench.timeouts.read)


def _disk_cache(bench: Bench, case: Case, cache: Path, result: ToolResult) -> None:
    """Unmount (done), drop_caches, remount on the same cache directory and read again."""
    spec = _spec(bench, case, cache, "remount")
    try:
        bench.drop_caches()
        with mounted(bench, spec):
            mark = case.access.mark()
            result.disk = timed_read(spec.file_path, bench.size, bench.timeouts.read)
            result.disk.traffic = case.access.traffic_since(mark, bench.uri)
    except MountFailed as error:
        result.disk = Step(status=str(error))


def _random(bench: Bench, case: Case, cache: Path, result: ToolResult) -> None:
    spec = _spec(bench, case, cache, "random")
    with mounted(bench, spec):
        bench.drop_caches()
        mark = case.access.mark()
        result.random_cold = random_reads(bench, spec.file_path, f"{case.label} cold")
        result.random_cold.traffic = case.access.traffic_since(mark, bench.uri)
        if not result.random_cold.ok:
            return
        mark = case.access.mark()
        result.random_warm = random_reads(bench, spec.file_path, f"{case.label} warm")
        result.random_warm.traffic = case.access.traffic_since(mark, bench.uri)


def _rangefs_stats(bench: Bench, mountpoint: Path, label: str) -> dict[str, object] | None:
    """``rangefs stats --json`` of a mount; the JSON is kept with the logs."""
    argv = [str(tools.rangefs_command()), "stats", str(mountpoint), "--json"]
    done = procs.run(argv, timeout=30, env=tools.rangefs_env(bench.rangefs_source))
    if not done.ok:
        bench.note(f"rangefs stats failed: {done.problem()}")
        return None
    (bench.logs / f"rangefs-stats-{label}.json").write_text(done.stdout)
    stats = json.loads(done.stdout)
    return stats if isinstance(stats, dict) else None


def _number(stats: dict[str, object] | None, section: str, key: str) -> int | None:
    part = stats.get(section) if stats else None
    value = part.get(key) if isinstance(part, dict) else None
    return value if isinstance(value, int) else None


@contextlib.contextmanager
def _py_spy(bench: Bench, pid: int, output: Path | None) -> Iterator[None]:
    """Record the daemon with py-spy while the block runs (only when asked)."""
    command = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin")
    if output is None:
        yield
        return
    if command is None:
        bench.note("py-spy not found: pip install py-spy into the venv to profile rangefs")
        yield
        return
    argv = [command, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking"]
    argv += ["--output", str(output)]
    with procs.started(argv, bench.logs / "py-spy.out") as recorder:
        try:
            yield
        finally:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                bench.note("py-spy did not finish writing within 30 s")

"""Benchmark rangefs against curl, aria2c, rclone mount and httpdirfs, over loopback and an emulated WAN.

    .venv/bin/python benchmarks/bench.py [--scenarios sequential,random,tools|all] [--size 512M]
        [--profiles loopback,wan] [--tools rangefs,curl,aria2c,rclone,httpdirfs] [--out FILE]

Installs nothing: benchmarks/setup.sh installs the tools (see benchmarks/README.md). Needs root for
drop_caches and kernel readahead tuning. Only 127.0.0.1 is used. Prints a markdown report and writes it to
--out; the tools' logs go to a logs/ folder beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchlib import origin, procs, realtools, report, scenarios, tools
from benchlib.results import MiB, Run, Step, ToolResult

HERE = Path(__file__).resolve().parent
PROFILES = ("loopback", "wan")
SCENARIOS = ("sequential", "random", "tools")
DEFAULT_SCENARIOS = ("sequential", "random")  # tools is added with --scenarios (or all)
_SIZE = re.compile(r"^(\d+)([KMG]?)(?:i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 512M, 1G)")
    size = int(match.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}[match.group(2).upper()]
    if size < MiB:
        raise argparse.ArgumentTypeError("the file must be at least 1M")
    return size


def parse_list(allowed: tuple[str, ...], *, all_word: bool = False) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        if all_word and chosen == ["all"]:
            return list(allowed)
        unknown = [item for item in chosen if item not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}" + (" or all" if all_word else ""))
        return [item for item in allowed if item in chosen]  # canonical order: curl before the others

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios",
        type=parse_list(SCENARIOS, all_word=True),
        default=list(DEFAULT_SCENARIOS),
        help="sequential,random,tools or all (default sequential,random)",
    )
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"), help="test file size (default 512M)")
    parser.add_argument("--profiles", type=parse_list(PROFILES), default=list(PROFILES), help="loopback,wan")
    parser.add_argument(
        "--tools", type=parse_list(tools.ALL_TOOLS), default=list(tools.ALL_TOOLS), help=",".join(tools.ALL_TOOLS)
    )
    parser.add_argument(
        "--out", type=Path, help="markdown report file (default results/latest.md; tools only: results/tools/latest.md)"
    )
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time of the wan profile (40)")
    parser.add_argument("--wan-rate", default="20m", help="nginx limit_rate per connection in the wan profile (20m)")
    parser.add_argument("--random-reads", type=int, default=200, help="4 KiB random reads per run (200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random offsets (1)")
    parser.add_argument("--read-timeout", type=float, default=240.0, help="seconds for one whole-file read (240)")
    parser.add_argument("--random-timeout", type=float, default=150.0, help="seconds for one random-read run (150)")
    parser.add_argument("--work-dir", type=Path, help="parent of the temporary directory (default: the system's)")
    parser.add_argument("--rangefs-args", default="", help="extra rangefs mount arguments, e.g. '--connections 16'")
    parser.add_argument("--py-spy", type=Path, help="record rangefs's loopback cold read with py-spy (raw format)")
    parser.add_argument("--tool-timeout", type=float, default=90.0, help="seconds for one tools-scenario command (90)")
    parser.add_argument(
        "--prefetch-repeats", type=int, default=3, help="runs of each command with format prefetch on and off (3)"
    )
    return parser


def throughput(scenarios_chosen: list[str]) -> bool:
    """Whether the run reads the big test file (the sequential or random scenario)."""
    return "sequential" in scenarios_chosen or "random" in scenarios_chosen


def default_out(scenarios_chosen: list[str]) -> Path:
    """A tools-only run reports to its own folder, so that it does not replace the throughput report."""
    if throughput(scenarios_chosen):
        return HERE / "results" / "latest.md"
    return HERE / "results" / "tools" / "latest.md"


def missing_requirements(chosen: list[str], scenarios_chosen: list[str]) -> list[str]:
    """Commands the run cannot do without, as 'command (Debian package)'."""
    needed = ["nginx", "dd", "cmp"] if throughput(scenarios_chosen) else ["nginx"]
    if any(tool in tools.FUSE_TOOLS for tool in chosen):
        needed.append("fusermount3")
    return [f"{command} (package {tools.PACKAGES[command]})" for command in needed if shutil.which(command) is None]


def make_data(path: Path, size: int) -> None:
    """``size`` bytes from os.urandom: incompressible, so no layer can cheat by compressing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        remaining = size
        while remaining > 0:
            chunk = min(remaining, 4 * MiB)
            out.write(os.urandom(chunk))
            remaining -= chunk


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def environment(work: Path, dropped: bool) -> dict[str, str]:
    return {
        "Machine": f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}",
        "rangefs source": rangefs_source(),
        "Load average at start": load_report(work),
        "Work directory filesystem": _filesystem_of(work),
        "Page cache dropped before cold reads": "yes" if dropped else "NO (not root): cold numbers are not cold",
        "Date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "Command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def rangefs_source() -> str:
    """The commit rangefs was run from, and whether its source had uncommitted changes."""
    repo = HERE.parent
    head = procs.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], timeout=10)
    if not head.ok:
        return "unknown (not a git checkout)"
    dirty = procs.run(["git", "-C", str(repo), "status", "--porcelain", "--", "rangefs"], timeout=10)
    changed = len(dirty.stdout.splitlines()) if dirty.ok else 0
    suffix = f" with uncommitted changes in {changed} files of rangefs/" if changed else ""
    return f"commit {head.stdout.strip()}{suffix}"


def load_report(work: Path) -> str:
    """Load average, and FUSE mounts that are not ours: signs that something else runs on the machine."""
    others = [path for path, kind in procs.mounts() if "fuse" in kind and not path.startswith(str(work) + "/")]
    text = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return text + (f"; {len(others)} other FUSE mounts present" if others else "")


def _filesystem_of(path: Path) -> str:
    best = ("", "unknown")
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best[0]):
            best = (fields[1], fields[2])
    return best[1]


def versions(chosen: list[str], scenarios_chosen: list[str]) -> dict[str, str]:
    found = {"nginx": tools.version("nginx")}
    for tool in chosen:
        if tool not in tools.DOWNLOADERS or "sequential" in scenarios_chosen:
            found[tool] = tools.version(tool)
    if "tools" in scenarios_chosen:
        found.update(realtools.program_versions())
    return found


def run_tool(bench: scenarios.Bench, profile: origin.Profile, tool: str, base_url: str) -> ToolResult | None:
    """One tool under one profile; a tool that is missing or breaks gets a row saying so. None: the chosen
    scenarios have nothing for it (a downloader without the sequential scenario)."""
    if tool in tools.DOWNLOADERS and "sequential" not in bench.scenarios:
        return None
    if tools.executable(tool) is None:
        return ToolResult(profile.name, tool, cold=Step(status="not installed (benchmarks/setup.sh)"))
    try:
        case = scenarios.Case(profile, tool, base_url)
        if tool in tools.DOWNLOADERS:
            return scenarios.download(bench, case)
        return scenarios.fuse(bench, case)
    except Exception as error:  # one tool's failure is a row in the table, not the end of the run
        bench.note(f"{tool} ({profile.name}) broke: {type(error).__name__}: {error}")
        return ToolResult(profile.name, tool, cold=Step(status=f"error: {type(error).__name__}"))


def describe(result: ToolResult, size: int) -> str:
    cold = result.cold
    speed = cold.mib_per_s(size)
    text = f"{result.profile} {result.tool}: cold {cold.status}"
    if speed is not None:
        text += f" {cold.seconds:.2f} s {speed:.0f} MiB/s"
    if cold.traffic is not None:
        text += f", {cold.traffic.requests} requests"
    if result.random_cold is not None and result.random_cold.ok:
        text += f", random p50 {result.random_cold.percentile(0.5):.2f} ms"
    return text


def benchmark(args: argparse.Namespace, run: Run, work: Path) -> None:
    """Serve the files, then run every chosen scenario under every profile; fills ``run``."""
    www, logs = work / "www", work / "logs"
    logs.mkdir()
    data = www / "data.bin"
    if throughput(args.scenarios):
        log(f"writing {args.size // MiB} MiB of random bytes to {data}")
        make_data(data, args.size)
    dropped = procs.drop_caches()
    run.environment = environment(work, dropped)
    wan = origin.Profile("wan", args.rtt_ms, args.wan_rate)
    profiles = [origin.Profile("loopback", 0.0, None) if name == "loopback" else wan for name in args.profiles]
    bench = scenarios.Bench(
        work=work,
        logs=logs,
        data_file=data,
        size=args.size,
        access=origin.AccessLog(work / "nginx" / "access.log"),
        timeouts=scenarios.Timeouts(read=args.read_timeout, random=args.random_timeout),
        random_reads=args.random_reads,
        seed=args.seed,
        can_drop_caches=dropped,
        rangefs_args=shlex.split(args.rangefs_args),
        py_spy=args.py_spy.absolute() if args.py_spy else None,
        notes=run.notes,
        scenarios=frozenset(args.scenarios),
    )
    tools_bench = None
    if "tools" in args.scenarios:
        log("making the tools scenario's files (zip, MP4 with ffmpeg, SQLite, tar): about half a minute")
        tools_bench = realtools.ToolsBench(bench, www / "tools", args.tool_timeout, realtools.make_groups(args.seed))
        realtools.make_files(tools_bench)
    with contextlib.ExitStack() as stack:
        ports = stack.enter_context(origin.running_nginx(work / "nginx", www, profiles))
        urls = {}
        for profile in profiles:
            port = ports[profile.name]
            if profile.rtt_ms > 0:
                port = stack.enter_context(
                    origin.running_proxy(port, profile.rtt_ms, logs / "delayproxy.log", run.notes)
                )
            urls[profile] = f"http://{procs.LOOPBACK}:{port}/"
        if throughput(args.scenarios):
            run_throughput(args, run, bench, urls)
        if tools_bench is not None:
            chosen = [tool for tool in args.tools if tool in tools.FUSE_TOOLS]
            run.commands, run.prefetch = realtools.run_scenario(tools_bench, urls, chosen, args.prefetch_repeats, log)


def run_throughput(args: argparse.Namespace, run: Run, bench: scenarios.Bench, urls: dict[origin.Profile, str]) -> None:
    """The sequential and random scenarios: the local file, then every tool under every profile."""
    log("local file baseline")
    run.local = scenarios.local_baseline(bench)
    for profile, base_url in urls.items():
        for tool in args.tools:
            log(f"{profile.name}: {tool}")
            result = run_tool(bench, profile, tool, base_url)
            if result is not None:
                run.results.append(result)
                log(describe(result, args.size))


def keep_logs(work: Path, destination: Path) -> None:
    """Copy the tools' logs (and nginx's) next to the report."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for source in [*(work / "logs").glob("*"), *(work / "nginx").glob("*.log")]:
        if source.is_file():
            shutil.copy2(source, destination / source.name)


def remove_work(work: Path, notes: list[str]) -> None:
    """Delete the temporary directory, unless something is still mounted under it."""
    leftovers = [path for path in procs.mounted_paths() if path.startswith(str(work) + "/")]
    for path in leftovers:
        problem = procs.unmount(Path(path))
        if problem:
            notes.append(f"left mounted: {path}: {problem}")
    if any(path.startswith(str(work) + "/") for path in procs.mounted_paths()):
        notes.append(f"{work} was not removed: something is still mounted under it")
        return
    shutil.rmtree(work, ignore_errors=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: unmount, end processes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out or default_out(args.scenarios)
    missing = missing_requirements(args.tools, args.scenarios)
    if missing:
        print(f"bench: missing {', '.join(missing)}; run benchmarks/setup.sh", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        log("not root: the page cache cannot be dropped and rangefs cannot tune kernel readahead")
    signal.signal(signal.SIGTERM, _terminate)
    run = Run(
        size=args.size,
        profiles=args.profiles,
        rtt_ms=args.rtt_ms,
        wan_rate=args.wan_rate,
        random_reads=args.random_reads,
        scenarios=args.scenarios,
        versions=versions(args.tools, args.scenarios),
    )
    work = Path(tempfile.mkdtemp(prefix="rangefs-bench-", dir=args.work_dir)).resolve()
    try:
        benchmark(args, run, work)
    except (KeyboardInterrupt, SystemExit):
        run.notes.append("the run was interrupted: the tables are incomplete")
        raise
    finally:
        run.environment["Load average at end"] = load_report(work)
        keep_logs(work, out.parent / "logs")
        remove_work(work, run.notes)
        if args.py_spy and args.py_spy.exists():
            run.profile_summary = report.summarize_collapsed(args.py_spy.read_text(errors="replace"))
        text = report.render(run)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

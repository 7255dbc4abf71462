"""Benchmark rangefs against rclone, httpdirfs, curl and aria2c on nginx, at real round-trip times.

    .venv/bin/python benchmarks/bench.py                  # wan (40 ms RTT): tools, random, sequential
    .venv/bin/python benchmarks/bench.py --only sqlite-pk --tools rangefs    # one thing, quickly
    .venv/bin/python benchmarks/bench.py --help           # every option, profile and scenario

Profiles with a round-trip time serve from nginx inside a network namespace (../shared/netem/netns.sh), so the
kernel's TCP runs end to end. Installs nothing (benchmarks/setup.sh does). Needs root. Prints a markdown
report and writes it to --out; the tools' logs go to a logs/ folder beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # the repository root: the tests' shared helpers (tests/netns.py)

from benchlib import chart, options, origin, procs, realtools, report, scenarios, tools  # noqa: E402
from benchlib.results import MiB, Run, Step, ToolResult  # noqa: E402

from tests import netns  # noqa: E402


def throughput(scenarios_chosen: list[str]) -> bool:
    """Whether the run reads the big test file (the sequential or random scenario)."""
    return "sequential" in scenarios_chosen or "random" in scenarios_chosen


def default_out(args: argparse.Namespace) -> Path:
    """A partial run reports to its own folder, so that it does not replace the full run's report."""
    full = set(args.scenarios) == set(options.SCENARIOS) and options.full_tools_run(args)
    return HERE / "results" / ("latest.md" if full else "partial/latest.md")


def missing_requirements(args: argparse.Namespace, profiles: list[origin.Profile]) -> list[str]:
    """What the run cannot do without."""
    needed = ["nginx", "dd", "cmp"] if throughput(args.scenarios) else ["nginx"]
    if any(tool in tools.FUSE_TOOLS for tool in args.tools):
        needed.append("fusermount3")
    missing = [f"{command} (package {tools.PACKAGES[command]})" for command in needed if shutil.which(command) is None]
    if any(profile.namespaced for profile in profiles):
        reason = netns.skip_reason()
        if reason:
            missing.append(f"network namespaces: {reason}")
    return missing


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


def environment(work: Path, dropped: bool, source: Path | None) -> dict[str, str]:
    return {
        "Machine": f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}",
        "rangefs source": rangefs_source(source),
        "Load average at start": load_report(work),
        "Work directory filesystem": _filesystem_of(work),
        "Page cache dropped before cold reads": "yes" if dropped else "NO (not root): cold numbers are not cold",
        "Date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "Command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def rangefs_source(source: Path | None) -> str:
    """The commit of the rangefs that runs (``source`` with --rangefs-path, else the venv's, wherever it is
    installed from), and whether its source had uncommitted changes."""
    # Asked of a fresh interpreter with the daemon's environment: this one has the benchmark's repository root
    # on sys.path, which may be a different checkout (a worktree) from the one the rangefs command imports.
    code = "import rangefs.cli; print(rangefs.__file__)"
    where = procs.run([sys.executable, "-c", code], timeout=30, cwd="/", env=tools.rangefs_env(source))
    if not where.ok:
        return "unknown (rangefs is not importable)"
    repo = Path(where.stdout.strip()).resolve().parent.parent
    head = procs.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], timeout=10)
    if not head.ok:
        return "unknown (not a git checkout)"
    dirty = procs.run(["git", "-C", str(repo), "status", "--porcelain", "--", "rangefs"], timeout=10)
    changed = len(dirty.stdout.splitlines()) if dirty.ok else 0
    suffix = f" with uncommitted changes in {changed} files of rangefs/" if changed else ""
    return f"{repo}, commit {head.stdout.strip()}{suffix}"


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


def versions(args: argparse.Namespace, commands: list[realtools.Command]) -> dict[str, str]:
    found = {"nginx": tools.version("nginx")}
    for tool in args.tools:
        if tool not in tools.DOWNLOADERS or "sequential" in args.scenarios:
            found[tool] = tools.version(tool, tools.rangefs_env(args.rangefs_path) if tool == "rangefs" else None)
    if "tools" in args.scenarios:
        found.update(realtools.program_versions(commands))
    return found


def run_tool(bench: scenarios.Bench, served: origin.Origin, tool: str) -> ToolResult | None:
    """One tool under one profile; a tool that is missing or breaks gets a row saying so. None: the chosen
    scenarios have nothing for it (a downloader without the sequential scenario)."""
    name = served.profile.name
    if tool in tools.DOWNLOADERS and "sequential" not in bench.scenarios:
        return None
    if tools.executable(tool) is None:
        return ToolResult(name, tool, cold=Step(status="not installed (benchmarks/setup.sh)"))
    try:
        case = scenarios.Case(served, tool)
        if tool in tools.DOWNLOADERS:
            return scenarios.download(bench, case)
        return scenarios.fuse(bench, case)
    except Exception as error:  # one tool's failure is a row in the table, not the end of the run
        bench.note(f"{tool} ({name}) broke: {type(error).__name__}: {error}")
        return ToolResult(name, tool, cold=Step(status=f"error: {type(error).__name__}"))


def describe(result: ToolResult, size: int) -> str:
    cold = result.cold
    speed = cold.mib_per_s(size)
    parts = []
    if speed is not None:
        parts.append(f"cold {cold.seconds:.2f} s {speed:.0f} MiB/s")
    elif cold.status != "ok":
        parts.append(f"cold {cold.status}")
    if cold.traffic is not None:
        parts.append(f"{cold.traffic.requests} requests")
    if result.random_cold is not None:
        p50 = result.random_cold.percentile(0.5)
        parts.append(f"random p50 {p50:.2f} ms" if p50 is not None else f"random {result.random_cold.status}")
    return f"{result.profile} {result.tool}: " + ", ".join(parts)


def tcp_settings(namespace: str) -> str:
    """The origin's congestion control and slow start after idle, inside its namespace: they decide how fast a
    response leaves a new or idle connection (BBR paces an application-limited one at its bandwidth estimate)."""
    found = []
    for key in ("net.ipv4.tcp_congestion_control", "net.ipv4.tcp_slow_start_after_idle"):
        done = procs.run(netns.exec_argv(namespace, ["sysctl", "-n", key]), timeout=10)
        found.append(f"{key.rpartition('.')[2]} {done.stdout.strip() if done.ok else '?'}")
    return ", ".join(found)


def namespace_name(profile: origin.Profile) -> str:
    """A namespace name unique to this run and profile, short enough for netns.sh's veth names (15 chars)."""
    return f"rfb{os.getpid() % 100000}{profile.name[0]}{'t' if profile.rate else ''}{'s' if profile.tls else ''}"


def benchmark(args: argparse.Namespace, run: Run, work: Path, tools_bench: realtools.ToolsBench) -> None:
    """The local floors, then every chosen scenario under every profile, one origin at a time; fills ``run``."""
    bench = tools_bench.bench
    if throughput(args.scenarios):
        log(f"writing {args.size // MiB} MiB of random bytes to {bench.data_file}")
        make_data(bench.data_file, args.size)
    if "tools" in args.scenarios:
        log("making the tools scenario's files (zip, MP4 with ffmpeg, SQLite): about 15 s")
        realtools.make_files(tools_bench)
    bench.can_drop_caches = procs.drop_caches()
    run.environment = environment(work, bench.can_drop_caches, bench.rangefs_source)
    log("the local file: the floor")
    run.local = scenarios.local_baseline(bench)
    if "tools" in args.scenarios:
        run.commands += realtools.local_runs(tools_bench)
    for profile in run.profiles:
        name = namespace_name(profile)
        log(f"{profile.name}: starting nginx" + (f" in namespace {name}" if profile.namespaced else ""))
        with origin.running_origin(work / f"nginx-{profile.name}", bench.data_file.parent, profile, name) as served:
            log(f"{profile.name}: serving {served.base_url}")
            if profile.namespaced:
                run.environment[f"TCP of the origin ({profile.name})"] = tcp_settings(name)
            run_profile(args, run, tools_bench, served)


def run_profile(args: argparse.Namespace, run: Run, tb: realtools.ToolsBench, served: origin.Origin) -> None:
    """Every chosen scenario on one origin: the tools, then the raw HTTP floor, then each tool's reads."""
    bench = tb.bench
    if "tools" in args.scenarios:
        filesystems = [tool for tool in args.tools if tool in tools.FUSE_TOOLS]
        run.commands += realtools.profile_runs(tb, served, filesystems, log)
        if served.profile.name == "wan" and "rangefs" in filesystems and args.prefetch_repeats > 0:
            log(f"tools wan: format-aware prefetch on and off, {args.prefetch_repeats} times each")
            run.prefetch += realtools.prefetch_runs(tb, served, args.prefetch_repeats, bench.rangefs_args)
        if served.profile.name == "wan" and "rangefs" in filesystems and args.consistency_repeats > 0:
            repeats, late = args.consistency_repeats, args.late_open
            log(f"tools wan: opened at once and {late:g} s after mounting, {repeats} times each")
            run.consistency += realtools.consistency_runs(tb, served, repeats, bench.rangefs_args, late)
    if "random" in args.scenarios:
        floor = scenarios.raw_http_random(bench, served)
        run.network_floor.append(floor)
        log(describe(floor, args.size))
    if throughput(args.scenarios):
        for tool in args.tools:
            log(f"{served.profile.name}: {tool}")
            result = run_tool(bench, served, tool)
            if result is not None:
                run.results.append(result)
                log(describe(result, args.size))


def draw_chart(args: argparse.Namespace, run: Run, out: Path, *, complete: bool) -> None:
    """The chart of the wan tools rows: to --chart, or to benchmarks/chart-wan.png for a complete full tools run
    (a file to commit), else beside the report."""
    if "tools" not in args.scenarios or "wan" not in [profile.name for profile in run.profiles]:
        return
    committed = complete and options.full_tools_run(args)
    path = args.chart or (HERE / "chart-wan.png" if committed else out.parent / "chart-wan.png")
    wan = next(profile for profile in run.profiles if profile.name == "wan")
    title = f"Real tools through FUSE at {wan.rtt_ms} ms RTT (kernel TCP via netns), cold, seconds per command"
    problem = chart.render(run, "wan", title, path)
    if problem:
        run.notes.append(f"no chart: {problem}")
    else:
        shown = path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path
        run.chart = ("wan", str(shown))


def keep_logs(work: Path, destination: Path) -> None:
    """Copy the tools' logs (and each nginx's, named by profile) next to the report."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for source in (work / "logs").glob("*"):
        if source.is_file():
            shutil.copy2(source, destination / source.name)
    for source in work.glob("nginx-*/*.log"):
        shutil.copy2(source, destination / f"{source.parent.name}-{source.name}")


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
    raise SystemExit(128 + signum)  # run the finally blocks: unmount, end processes, take namespaces down


def main(argv: list[str] | None = None) -> int:
    args = options.parse(argv)
    out: Path = args.out or default_out(args)
    by_name = origin.profiles(args.rtt_ms, args.wan_rate)
    profiles = [by_name[name] for name in args.profiles]
    missing = missing_requirements(args, profiles)
    if missing:
        print(f"bench: missing {'; '.join(missing)}; run benchmarks/setup.sh", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        log("not root: the page cache cannot be dropped and rangefs cannot tune kernel readahead")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    work = Path(tempfile.mkdtemp(prefix="rangefs-bench-", dir=args.work_dir)).resolve()
    (work / "logs").mkdir()
    bench = scenarios.Bench(
        work=work,
        logs=work / "logs",
        data_file=work / "www" / "data.bin",
        size=args.size,
        timeouts=scenarios.Timeouts(read=args.read_timeout, random=args.random_timeout),
        random_reads=args.random_reads,
        seed=args.seed,
        can_drop_caches=False,
        rangefs_args=shlex.split(args.rangefs_args),
        rangefs_source=args.rangefs_path,
        py_spy=args.py_spy.absolute() if args.py_spy else None,
        py_spy_profile=profiles[0].name,
        scenarios=frozenset(args.scenarios),
    )
    commands = realtools.choose(realtools.all_commands(args.seed), args.commands, bench)
    tools_bench = realtools.ToolsBench(bench, work / "www" / "tools", args.tool_timeout, commands)
    run = Run(
        size=args.size,
        profiles=profiles,
        random_reads=args.random_reads,
        scenarios=args.scenarios,
        versions=versions(args, commands),
        notes=bench.notes,
    )
    started = time.monotonic()
    complete = False
    try:
        benchmark(args, run, work, tools_bench)
        complete = True
    except (KeyboardInterrupt, SystemExit):
        run.notes.append("the run was interrupted: the tables are incomplete")
        raise
    finally:
        run.environment["Load average at end"] = load_report(work)
        run.environment["Run time"] = f"{(time.monotonic() - started) / 60:.1f} minutes"
        keep_logs(work, out.parent / "logs")
        remove_work(work, run.notes)
        if args.py_spy and args.py_spy.exists():
            run.profile_summary = report.summarize_collapsed(args.py_spy.read_text(errors="replace"))
        draw_chart(args, run, out, complete=complete)
        text = report.render(run)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(text)
        log(f"report: {out}" + (f"; chart: {run.chart[1]}" if run.chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench.py's command line: every option with its unit and default, and ``--help`` that explains the run."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from benchlib import realtools, tools
from benchlib.results import MiB

PLAIN_PROFILES = ("loopback", "lan", "wan", "wan-throttled")
PROFILES = (*PLAIN_PROFILES, *(f"{name}-tls" for name in PLAIN_PROFILES))
SCENARIOS = ("tools", "random", "sequential")  # the order they run in, per profile
_SIZE = re.compile(r"^(\d+)([KMG]?)(?:i?B)?$", re.IGNORECASE)

_COMMANDS = "\n".join(
    f"              {'*' if c.default else ' '} {c.key:13} {c.label} ({c.file_name})" for c in realtools.all_commands(0)
)
EPILOG = f"""\
profiles (--profiles; default wan):
  loopback        nginx on 127.0.0.1, no namespace, no delay
  lan             1 ms RTT        \\  nginx runs inside a network namespace made by netns.sh (kernel TCP end to
  wan             --rtt-ms RTT     > end, NFQUEUE delay); clients on the host use its address 10.77.X.2
  wan-throttled   --rtt-ms RTT + nginx limit_rate --wan-rate per connection (and sendfile_max_chunk 64k)
  NAME-tls        each of the above over HTTPS (loopback-tls, lan-tls, wan-tls, wan-throttled-tls): nginx with a
                  certificate made for the run (openssl, a CA of its own), which every client is told to trust:
                  rangefs --ca-bundle, rclone --ca-cert, httpdirfs --cacert, curl --cacert, aria2c
                  --ca-certificate; verified, never skipped. A new connection costs one more round trip.
  netns.sh is ../shared/netem/netns.sh from the repository root, or $RANGEFS_NETNS_SH. Each namespace is taken
  down (netns.sh down) and each nginx ended by its PID when the run ends, also on Ctrl-C or SIGTERM.

scenarios (--scenarios; default all of them), each on every chosen profile, caches cold every time:
  tools       real programs on real files through each FUSE mount (rangefs, rclone --vfs-cache-mode full,
              httpdirfs --cache), each command on a fresh mount and cache after drop_caches, then once warm;
              the same command on the local file is the floor. Commands (--commands; * = default):
{_COMMANDS}
  random      --random-reads preads of 4 KiB at seeded random offsets through each mount (p50/p99 per read);
              the floor is the same reads as serial range requests on one warm HTTP connection
  sequential  dd of a --size file through each mount, against curl and aria2c -x8; page-cache and
              disk-cache re-reads; CPU-seconds and peak RSS of each daemon's processes
  --only NAME runs one scenario, or one tools command by its key (e.g. --only sqlite-pk), and makes only the
  files it needs: the quick way to check one thing (combine with --tools rangefs --prefetch-repeats 0).

output: a markdown report (--out, under benchmarks/results/, not committed) with a summary table per profile
(seconds, and requests / MiB sent by nginx for each command, from its access log), the tools' logs and each
command's access-log lines (logs/*.chain) beside it, and a PNG chart of the wan tools rows (--chart).

A full run (wan; tools, random, sequential; 512 MiB) takes about 4 minutes on 2 cores. Needs root
(drop_caches, namespaces, kernel readahead tuning); benchmarks/setup.sh installs nginx, the competitors, the
programs and what netns.sh needs. Only 127.0.0.1 and the 10.77.X.2 addresses of the run's own namespaces are
contacted; every process it starts is ended by its PID, every mount unmounted.
"""


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
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="Benchmark rangefs against rclone, httpdirfs, curl and aria2c on nginx, at real round-trip "
        "times (kernel TCP through a network namespace).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--scenarios",
        metavar="LIST",
        type=parse_list(SCENARIOS, all_word=True),
        default=list(SCENARIOS),
        help="comma-separated: tools,random,sequential, or all (default all)",
    )
    add(
        "--only",
        metavar="NAME",
        choices=[*SCENARIOS, *realtools.COMMAND_KEYS],
        help="one scenario or one tools command (overrides --scenarios and --commands)",
    )
    add(
        "--profiles",
        metavar="LIST",
        type=parse_list(PROFILES, all_word=True),
        default=["wan"],
        help="comma-separated: loopback,lan,wan,wan-throttled, or all (default wan)",
    )
    add(
        "--tools",
        metavar="LIST",
        type=parse_list(tools.ALL_TOOLS),
        default=list(tools.ALL_TOOLS),
        help=f"comma-separated, from {','.join(tools.ALL_TOOLS)} (default all; downloaders: sequential only)",
    )
    add(
        "--commands",
        metavar="LIST",
        type=parse_list(realtools.COMMAND_KEYS, all_word=True),
        default=list(realtools.DEFAULT_COMMANDS),
        help=f"tools scenario commands, or all (default {','.join(realtools.DEFAULT_COMMANDS)})",
    )
    add("--size", type=parse_size, default=parse_size("512M"), help="size of the sequential/random file (512M)")
    add("--rtt-ms", metavar="MS", type=int, default=40, help="round-trip time of wan and wan-throttled in ms (40)")
    add("--wan-rate", metavar="RATE", default="20m", help="nginx limit_rate per connection of wan-throttled (20m)")
    add("--random-reads", metavar="N", type=int, default=200, help="4 KiB random reads per run (200)")
    add("--seed", metavar="N", type=int, default=1, help="seed of the random offsets and the SQLite row (1)")
    add("--tool-timeout", metavar="S", type=float, default=90.0, help="seconds for one tools command (90)")
    add("--read-timeout", metavar="S", type=float, default=240.0, help="seconds for one whole-file read (240)")
    add("--random-timeout", metavar="S", type=float, default=150.0, help="seconds for one random-read run (150)")
    add(
        "--prefetch-repeats",
        metavar="N",
        type=int,
        default=3,
        help="runs of unzip -l and ffprobe with rangefs's format prefetch on and off, wan only; 0: skip (3)",
    )
    add(
        "--consistency-repeats",
        metavar="N",
        type=int,
        default=0,
        help="runs of unzip -l and ffprobe through rangefs opened at once and --late-open s after the mount, "
        "cold then warm (what revalidation on open costs), wan only; 0: skip (0)",
    )
    add(
        "--late-open",
        metavar="S",
        type=float,
        default=1.5,
        help="seconds after the mount (and between the cold and warm runs) of the late opens of "
        "--consistency-repeats; more than rangefs's --revalidate-after (1.5)",
    )
    add(
        "--rangefs-args",
        metavar="ARGS",
        default="",
        help="extra rangefs mount arguments, e.g. '--connections 16' or '-vv'",
    )
    add(
        "--rangefs-path",
        metavar="DIR",
        type=Path,
        help="run rangefs from this source checkout (put first on the daemon's PYTHONPATH), e.g. an older "
        "worktree to compare with; default: the rangefs the venv imports",
    )
    add(
        "--out",
        metavar="FILE",
        type=Path,
        help="report file (default benchmarks/results/latest.md; partial runs: results/partial/)",
    )
    add(
        "--chart",
        metavar="FILE",
        type=Path,
        help="PNG of the wan tools rows (default benchmarks/chart-wan.png for a run of every "
        "default command through all three filesystems, else beside the report)",
    )
    add(
        "--py-spy",
        metavar="FILE",
        type=Path,
        help="record rangefs's cold sequential read (first profile) with py-spy, raw format",
    )
    add(
        "--work-dir",
        metavar="DIR",
        type=Path,
        help="parent of the temporary directory (default: the system's; not a tmpfs)",
    )
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rangefs_path is not None:
        args.rangefs_path = args.rangefs_path.resolve()
        if not (args.rangefs_path / "rangefs" / "__init__.py").is_file():
            parser.error(f"--rangefs-path {args.rangefs_path}: no rangefs/__init__.py there")
    if args.only in SCENARIOS:
        args.scenarios = [args.only]
    elif args.only:
        args.scenarios, args.commands = ["tools"], [args.only]
    return args


def full_tools_run(args: argparse.Namespace) -> bool:
    """Whether the tools scenario ran every default command through every FUSE tool (worth committing)."""
    return (
        "tools" in args.scenarios
        and list(args.commands) == list(realtools.DEFAULT_COMMANDS)
        and all(tool in args.tools for tool in tools.FUSE_TOOLS)
    )

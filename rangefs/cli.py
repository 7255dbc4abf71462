"""Command line: argument parsing, logging set-up, exit codes and running a mount in the background.

Exit codes: 0 success, 1 an error the message explains, 2 bad usage or a bad urls file. ``get`` is in
download/command.py.
A background mount re-runs this program as ``mount --foreground --ready-fd N`` in a new session; the parent
returns only once the child reports the mount live (exit 0) or reports why it could not mount (exit 1).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from rangefs import __version__, mountopts
from rangefs.config import Entry, MountSettings, options, parse_size, read_urls_file
from rangefs.config.settings import default_log_file
from rangefs.download import arguments as get_arguments
from rangefs.errors import ConfigError, MountError, UsageError
from rangefs.mountpoint import check_fuse_available, check_mountpoint
from rangefs.systemd import journal, notify

log = logging.getLogger("rangefs")

# Problems of a urls file a background mount's daemon reports to the command that started it.
_REPORTED_PROBLEMS = 1000
# How long a background mount may take to become live before the parent gives up on it (seconds).
_READY_TIMEOUT = 60.0
# Files still to probe when the mount is live from which `rangefs mount` says so: about a second of probing
# even on loopback (~0.3 ms of the daemon's CPU each: README, "Long URL lists"), longer over a real network.
_ANNOUNCED_PROBES = 1000
# How long `rangefs reload` waits for the daemon to finish rereading its urls file (seconds): reading and
# checking 10,000 entries takes well under one.
_RELOAD_TIMEOUT = 30.0
_RELOAD_POLL_INTERVAL = 0.02


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rangefs", description="Mount remote files listed by URL, read-only.")
    parser.add_argument("--version", action="version", version=f"rangefs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount the URLs listed in a file")
    mount.add_argument("urls_file", type=Path, metavar="URLS_FILE", help="the list of URLs (see README)")
    mount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="an empty directory")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay attached; Ctrl-C unmounts")
    options.add_settings_arguments(mount)
    mount.add_argument("--pid-file", type=Path, help="write the daemon's process id to this file")
    _add_logging_options(mount)
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    reload = commands.add_parser("reload", help="reread a mount's urls file without unmounting (as SIGHUP)")
    reload.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")

    stats = commands.add_parser("stats", help="show a mount's live statistics")
    stats.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    stats.add_argument("--json", action="store_true", help="print the raw JSON (with --watch: one object a line)")
    stats.add_argument("-w", "--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    stats.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default: 1)")

    cache = commands.add_parser("cache", help="inspect and manage the block cache (safe while mounted)")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    info = cache_commands.add_parser("info", help="size, limit and cached bytes per URL")
    clear = cache_commands.add_parser("clear", help="delete cached blocks of the given URLs, or of all")
    clear.add_argument("urls", nargs="*", metavar="URL")
    prune = cache_commands.add_parser("prune", help="evict least recently used blocks down to a size")
    prune.add_argument("--max-size", required=True, help="size to prune down to, e.g. 2G")
    warm = cache_commands.add_parser("warm", help="fetch files of a live mount into its cache, whole or --index")
    warm.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    warm.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="files or directories (default: all)")
    warm.add_argument(
        "--index", action="store_true", help="only what format-aware prefetch would fetch (zip directories, ...)"
    )
    warm.add_argument("-j", "--jobs", type=int, default=4, help="files warmed at once (default: 4)")
    warm.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for action in (info, clear, prune):
        options.add_settings_arguments(action, only=["cache_dir"])

    get = commands.add_parser("get", help="download URLs with parallel connections, to files or stdout")
    get_arguments.add_arguments(get)
    _add_logging_options(get)

    umount = commands.add_parser("umount", help="unmount a rangefs mount")
    umount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    umount.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")
    return parser


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="set the log level")
    parser.add_argument(
        "--log-file", type=Path, help=f"log here (default: stderr; in the background {default_log_file()})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.command == "mount":
            return _mount(args)
        if args.command == "stats":
            return _stats(args)
        if args.command == "reload":
            return _reload(args)
        if args.command == "cache":
            return _cache(args)
        if args.command == "get":
            if not args.log_level and not args.verbose:
                args.log_level = "error"  # each failure is reported once, as one line, at the end
            _setup_logging(args, args.log_file)
            from rangefs.download import command as download_command  # lazy: the engine, for this command only

            return download_command.run(args)
        return _umount(args)
    except (UsageError, BaseExceptionGroup) as raised:
        error = _sole_exception(raised)
        if not isinstance(error, UsageError):
            raise
        print(f"rangefs: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line. ``mount -o name=value`` sets rangefs's own options as if given as flags (an
    fstab line has nothing else), drops mount(8)'s and leaves FUSE's in ``fuse_options``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "mount":
        options = mountopts.rangefs_options(_command_parser(parser, "mount"))
        own, fuse = mountopts.split_options(args.fuse_options or [], options)
        if own:
            args = parser.parse_args([*argv, *own])
        args.fuse_options = [",".join(fuse)] if fuse else []
    return args


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    # argparse offers no public way to a subcommand's parser.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices[command]
            if isinstance(chosen, argparse.ArgumentParser):
                return chosen
    raise LookupError(command)


def _sole_exception(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio's nurseries wrap what they raise)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _setup_logging(args: argparse.Namespace, log_file: Path | None) -> None:
    level = args.log_level.upper() if args.log_level else ["WARNING", "INFO", "DEBUG"][min(args.verbose, 2)]
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler()
    if log_file is None and journal.stream_is_journal(os.environ):
        handler.setFormatter(journal.JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO: far too much for a filesystem's log.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))


def _check_http2(wanted: bool) -> None:
    if wanted and importlib.util.find_spec("h2") is None:
        raise UsageError("--http2 needs the h2 package: pip install 'rangefs[http2]'")


def _settings(args: argparse.Namespace) -> MountSettings:
    settings = options.settings_from_arguments(args)
    _check_http2(settings.http2)
    return settings


def _mount(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # Before the checks: clearing a dead mount is worth a line (on stderr for a background mount's caller).
    _setup_logging(args, args.log_file if args.foreground else None)
    check_fuse_available()
    check_mountpoint(args.mountpoint)
    if not args.foreground:
        # The daemon parses the urls file and reports its problems here: parsing it twice cost 1.9 s of a
        # 100,000-line list's mount.
        return _mount_in_background(args, settings)
    import trio  # lazy, like the engine: the command that starts a background mount needs neither

    # Starting builds about ten objects per file that live as long as the mount (100,000 files: a million), and
    # the cyclic collector went over all of them again and again: a third of such a mount's start. It is off
    # until the mount is live, then they are frozen: never scanned again (the listing's probes gain too).
    gc.disable()
    try:
        entries = read_urls_file(args.urls_file, os.environ)
    except ConfigError as bad_file:
        shown = bad_file.problems[:_REPORTED_PROBLEMS]
        if len(bad_file.problems) > len(shown):
            shown.append(f"{args.urls_file}: ... and {len(bad_file.problems) - len(shown)} more problems")
        _report_to_parent(args.ready_fd, "config: " + json.dumps(shown))
        raise
    if args.pid_file:
        args.pid_file.write_text(f"{os.getpid()}\n")
    # While mounted, mount.serve turns SIGINT and SIGTERM into a clean unmount and SIGHUP into a reload. Outside
    # it (trio's start-up and shut-down, removing the pid file) one must not kill the process half-way: ignore
    # them there.
    stopping_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in stopping_signals}
    try:
        trio.run(_serve_and_report, entries, args, settings)
    except (MountError, BaseExceptionGroup) as raised:
        error = _sole_exception(raised)
        reason = f"error: {error}" if isinstance(error, MountError) else "error: crashed"
        _report_to_parent(args.ready_fd, reason)
        notify.notify(os.environ, f"STATUS={reason}")
        raise
    finally:
        gc.enable()
        if args.pid_file:
            args.pid_file.unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


async def _serve_and_report(entries: list[Entry], args: argparse.Namespace, settings: MountSettings) -> None:
    import trio

    from rangefs import mount

    mountpoint = args.mountpoint.absolute()
    async with trio.open_nursery() as nursery:
        urls_file = args.urls_file.absolute()
        progress = await nursery.start(partial(mount.serve, urls_file=urls_file), entries, mountpoint, settings)
        # See _mount. One collection first, or the garbage of starting would be frozen with the rest. Frozen,
        # the mount's state is also out of the way of full collections, which held the event loop 30-40 ms
        # at a time (seen at 40 ms RTT as a round trip lost after a zip's directory arrived).
        gc.enable()
        gc.collect()
        gc.freeze()
        # The probes go on after this: the parent says so if they are many (see _announce_probing).
        pending = progress.queued - progress.ended if progress.under_way else 0
        _report_to_parent(args.ready_fd, f"ready {pending} {progress.queued}")
        notify.ready(os.environ, f"serving {len(entries)} files on {mountpoint}")
    notify.stopping(os.environ, f"unmounted {mountpoint}")


def _report_to_parent(ready_fd: int | None, message: str) -> None:
    if ready_fd is None:
        return
    try:
        data = memoryview(f"{message}\n".encode())
        while data:  # a pipe takes a long message (a urls file's problems) in pieces
            data = data[os.write(ready_fd, data) :]
        os.close(ready_fd)
    except OSError:
        pass  # the parent is gone or was told already


def _child_argv(args: argparse.Namespace, settings: MountSettings, ready_fd: int) -> list[str]:
    argv = [sys.executable, "-m", "rangefs", "mount", str(args.urls_file.absolute()), str(args.mountpoint.absolute())]
    argv += ["--foreground", "--ready-fd", str(ready_fd), *options.settings_argv(settings)]
    if args.pid_file:
        argv += ["--pid-file", str(args.pid_file.absolute())]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    argv += ["-v"] * args.verbose
    return argv


def _mount_in_background(args: argparse.Namespace, settings: MountSettings) -> int:
    log_file = (args.log_file or default_log_file()).absolute()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    with open(log_file, "ab") as log_stream:
        child = subprocess.Popen(
            [*_child_argv(args, settings, write_fd), "--log-file", str(log_file)],
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=log_stream,
            pass_fds=(write_fd,),
            start_new_session=True,
            cwd="/",
        )
    os.close(write_fd)
    try:
        message = _read_report(read_fd, child)
    finally:
        os.close(read_fd)
    if message.startswith("ready"):
        _announce_probing(message, args.mountpoint)
        return 0
    if message.startswith("config: "):
        raise ConfigError(json.loads(message.removeprefix("config: ")))
    if message.startswith("error: "):
        raise MountError(message.removeprefix("error: "))
    raise MountError(f"the mount process did not start ({message}); see {log_file}")


def _announce_probing(ready: str, mountpoint: Path) -> None:
    """One line on stderr when the mount is live but many of its files are still being probed (in the
    daemon, which goes on with them): what a first ``ls -l`` will wait for, and where to watch it."""
    try:
        pending, queued = (int(field) for field in ready.split()[1:3])
    except ValueError:
        return
    if pending >= _ANNOUNCED_PROBES:
        print(
            f"rangefs: probing {queued - pending:,} of {queued:,} files... (in the background: a first `ls -l`"
            f" waits for them, `rangefs stats {mountpoint}` shows how far it got)",
            file=sys.stderr,
        )


def _read_report(read_fd: int, child: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + _READY_TIMEOUT
    received = b""
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            child.terminate()
            return f"not ready after {_READY_TIMEOUT:.0f} s, stopped it"
        readable, _, _ = select.select([read_fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(read_fd, 4096)
        if not chunk:
            code = child.wait()
            return f"it exited with code {code}"
        received += chunk
    return received.decode(errors="replace").strip()


def _stats(args: argparse.Namespace) -> int:
    from rangefs import monitor  # lazy: rich is only needed here

    return monitor.show(args.mountpoint, watch=args.watch, interval=args.interval, as_json=args.json)


def _reload_status(mountpoint: Path) -> dict[str, object]:
    from rangefs import monitor

    return monitor.root_json(mountpoint, "user.rangefs.reload")


def _reload(args: argparse.Namespace) -> int:
    """SIGHUP to the mount's daemon, then wait for the outcome of a reload that started after it."""
    pid = _reload_status(args.mountpoint)["pid"]
    assert isinstance(pid, int)
    asked_at = time.time()  # the daemon's reload takes its start time after the signal arrives
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        raise MountError(
            f"cannot signal the rangefs daemon (pid {pid}) of {args.mountpoint}: {error.strerror}"
        ) from None
    deadline = time.monotonic() + _RELOAD_TIMEOUT
    while True:
        status = _reload_status(args.mountpoint)
        started_at = status.get("started_at")
        if isinstance(started_at, float | int) and started_at >= asked_at:
            break
        if time.monotonic() > deadline:
            raise MountError(f"the daemon of {args.mountpoint} did not reload within {_RELOAD_TIMEOUT:.0f} s")
        time.sleep(_RELOAD_POLL_INTERVAL)
    problems = status.get("problems")
    if not status.get("ok"):
        assert isinstance(problems, list)
        raise ConfigError([*map(str, problems), "nothing changed: the mount keeps the files it had"])
    counts = ", ".join(f"{status.get(what, 0)} {what}" for what in ("added", "removed", "changed"))
    print(f"reloaded: {counts}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    if args.cache_command == "warm":
        return _warm(args)
    from rangefs.cache import BlockCache

    cache = BlockCache(options.settings_from_arguments(args).cache_dir)
    if not cache.root.is_dir():
        raise UsageError(f"no cache at {cache.root}")
    problem = cache.open()
    if problem:
        raise UsageError(problem)
    try:
        if args.cache_command == "info":
            limit = cache.last_limit()
            print(f"cache directory  {cache.root}")
            print(f"size             {_human(cache.usage())}")
            print(f"limit            {_human(limit) if limit else 'none'}")
            for usage in cache.objects():
                print(f"{_human(usage.bytes):>10}  {usage.blocks:>7} blocks  {usage.description.get('url', '?')}")
        elif args.cache_command == "clear":
            wanted = set(args.urls)
            dropped = sum(
                cache.drop_object(usage.object_id)
                for usage in cache.objects()
                if not wanted or usage.description.get("url") in wanted
            )
            print(f"deleted {dropped} blocks; cache size now {_human(cache.usage())}")
        else:
            evicted = cache.prune(parse_size(args.max_size))
            print(f"evicted {evicted} blocks; cache size now {_human(cache.usage())}")
    finally:
        cache.close()
    return 0


def _warm(args: argparse.Namespace) -> int:
    from rangefs import warm
    from rangefs.download.progress import BarProgress, NoProgress, Reporter

    if args.jobs < 1:
        raise UsageError("-j must be at least 1")
    import trio

    from rangefs import monitor

    statistics = monitor.root_json(args.mountpoint)
    targets = warm.find_targets(args.mountpoint, args.paths)
    try:
        if args.index:
            for target in targets:
                warm.plan_index(target)
    except OSError as error:
        raise MountError(f"cannot read the index of {target.path}: {error.strerror}") from None
    problem = warm.check_fits(targets, statistics)
    if problem:
        raise MountError(problem)
    reporter: Reporter = NoProgress() if args.quiet or not sys.stderr.isatty() else BarProgress(len(targets))
    reporter.start()
    try:
        trio.run(partial(warm.warm_all, targets, jobs=args.jobs, reporter=reporter))
    finally:
        reporter.stop()
    for target in targets:
        if target.error:
            print(f"rangefs cache warm: {target.error}", file=sys.stderr)
    warmed = sum(target.length for target in targets if not target.error)
    print(f"warmed {len(targets)} files, {_human(warmed)}", file=sys.stderr)
    return 1 if any(target.error for target in targets) else 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} TiB"


def _umount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.absolute()
    command = ["fusermount3", "-u", *(["-z"] if args.lazy else []), str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().removeprefix("fusermount3: ") or f"exit code {result.returncode}"
        hint = " (files are open: close them, or use --lazy)" if "busy" in reason.lower() else ""
        raise MountError(f"cannot unmount {mountpoint}: {reason}{hint}")
    return 0

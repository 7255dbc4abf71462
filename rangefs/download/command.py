"""What the arguments of ``rangefs get`` (``arguments.py``) become: jobs (URL, output), settings, the progress
reporter.

    rangefs get URL... [-o DIR | -o FILE | -o - | -]

Without ``-o`` files go to the current directory, named after their URLs as in a mount. ``-`` (or ``-o -``)
writes every URL to stdout, one after another, in order. Every problem is one line on stderr,
``rangefs get: WHAT: WHY``; the exit code is 1 if any URL failed (the others are still downloaded).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import trio

from rangefs.config import name_from_url, options
from rangefs.download.jobs import GetJob, get_all, settings_for_get
from rangefs.download.output import Digest, FileSink, StreamSink
from rangefs.download.progress import BarProgress, NoProgress, Reporter
from rangefs.errors import UsageError
from rangefs.library.options import check_url, headers_from


def run(args: argparse.Namespace) -> int:
    """Download what ``args`` say; 0 if every URL succeeded, else 1 (each failure reported on stderr)."""
    jobs = _jobs(args)
    if args.jobs < 1:
        raise UsageError("-j must be at least 1")
    settings = options.settings_from_arguments(args)
    reporter: Reporter = NoProgress() if args.quiet or not sys.stderr.isatty() else BarProgress(len(jobs))
    reporter.start()
    try:
        download = partial(get_all, jobs, settings_for_get(settings), parallel=args.jobs, reporter=reporter)
        stopped_by = trio.run(partial(download, fill_cache=args.fill_cache))
    finally:
        reporter.stop()
    for job in jobs:
        if job.error:
            print(f"rangefs get: {job.error}", file=sys.stderr)
    if stopped_by is not None:
        return 128 + stopped_by  # the shell's code for a command a signal ended
    return 1 if any(job.error for job in jobs) else 0


def _jobs(args: argparse.Namespace) -> list[GetJob]:
    urls: list[str] = list(args.urls)
    output: str | None = args.output
    if urls[-1] == "-":
        if output is not None and output != "-":
            raise UsageError("give either '-' or -o, not both")
        urls, output = urls[:-1], "-"
    if not urls:
        raise UsageError("no URL given")
    for url in urls:
        try:
            check_url(url)
        except ValueError as error:
            raise UsageError(str(error)) from None
    try:
        headers = headers_from([_header(text) for text in args.header])
    except ValueError as error:
        raise UsageError(str(error)) from None
    digests = [Digest(name, value) for name, value in (("sha256", args.sha256), ("md5", args.md5)) if value]
    if len(digests) > 1:
        raise UsageError("give --sha256 or --md5, not both")
    if digests and len(urls) > 1:
        raise UsageError("--sha256/--md5 check one file: give one URL")
    digest = digests[0] if digests else None
    if output == "-":
        sink = StreamSink(sys.stdout.fileno(), digest=digest)
        return [GetJob(url, sink, headers) for url in urls]
    directory: Path | None = Path(output) if output is not None and Path(output).is_dir() else None
    if output is None:
        directory = Path.cwd()
    if directory is None and len(urls) > 1:
        raise UsageError(f"{output} is not a directory (several URLs need one)")
    jobs = []
    for url in urls:
        if directory is None:
            path = Path(str(output))
        else:
            name, problem = name_from_url(url)
            if name is None:
                raise UsageError(f"{problem or url}; use -o FILE")
            path = directory / name.name
        jobs.append(GetJob(url, FileSink(path.absolute(), force=args.force, digest=digest), headers))
    paths = [job.sink.name for job in jobs]
    if len(set(paths)) != len(paths):
        raise UsageError("two URLs would be saved under the same name; download them one at a time with -o FILE")
    return jobs


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"expected -H 'Name: value', got {text!r}")
    return name.strip(), value.strip()

"""Benchmark of rangefs without a mount: the Python API and fsspec filesystem vs remotezip and fsspec's HTTP
filesystem, and ``rangefs get`` vs aria2c, curl and HydraStream, side by side on one nginx at 40 ms RTT.

    .venv/bin/pip install -e '.[bench]'       # fsspec, aiohttp, pyarrow, remotezip, hydrastream
    .venv/bin/python benchmarks/library.py    # as root (network namespaces); about 2 minutes

Latency comes from network namespaces (tests/netns.py, the kernel delays every packet), never from a proxy.
Rows of the ``wan`` profile (40 ms RTT): listing a 2,000-member zip with zipfile, reading one Parquet column
with pyarrow. Rows of ``wan-throttled`` (40 ms, nginx ``limit_rate`` per connection): downloading a 512 MiB
file to a file and to stdout. Each row is a fresh process with a cold cache; requests and bytes come from
nginx's access log, seconds from the process (the operation only, for the Python rows; the whole command
for the downloads), peak RSS from wait4.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from benchlib import origin as nginx  # noqa: E402

from tests import media  # noqa: E402

MiB = 1024 * 1024
HS = shutil.which("hs") or str(Path(sys.executable).parent / "hs")  # HydraStream, in the venv
PYTHON_ROWS = {
    "zip": ["rangefs.open", "remotezip", "fsspec http", "fsspec http + blockcache"],
    "parquet": ["rangefs.open", "fsspec rangefs", "fsspec http"],
}


def python_row(kind: str, tool: str, url: str, scratch: Path) -> float:
    """Run one Python-row operation in this process; returns its seconds (imports excluded)."""
    import zipfile

    if kind == "zip":
        if tool == "rangefs.open":
            import rangefs

            started = time.perf_counter()
            with rangefs.Session(cache_dir=scratch / "cache") as session, session.open(url) as file:
                count = len(zipfile.ZipFile(file).namelist())
        elif tool == "remotezip":
            from remotezip import RemoteZip

            started = time.perf_counter()
            with RemoteZip(url) as archive:
                count = len(archive.namelist())
        else:
            import fsspec

            target = f"blockcache::{url}" if "blockcache" in tool else url
            options = {"blockcache": {"cache_storage": str(scratch / "fsspec")}} if "blockcache" in tool else {}
            started = time.perf_counter()
            with fsspec.open(target, **options) as file:
                count = len(zipfile.ZipFile(file).namelist())
        assert count == 2000, count
        return time.perf_counter() - started
    import pyarrow.parquet as pq

    started = time.perf_counter()
    if tool == "rangefs.open":
        import rangefs

        with rangefs.Session(cache_dir=scratch / "cache") as session, session.open(url) as file:
            table = pq.read_table(file, columns=["c"])
    elif tool == "fsspec rangefs":
        import rangefs
        from rangefs.library.filesystem import RangefsFileSystem

        with rangefs.Session(cache_dir=scratch / "cache") as session:
            table = pq.read_table(url, filesystem=RangefsFileSystem(session=session), columns=["c"])
    else:
        import fsspec

        with fsspec.open(url) as file:
            table = pq.read_table(file, columns=["c"])
    assert table.num_rows == 512 * 1024
    return time.perf_counter() - started


def run_measured(command: str, cwd: Path) -> tuple[float, int, int]:
    """Run a shell command; its wall seconds, the largest peak RSS (KiB) of its processes, and exit code.

    The peak comes from GNU time around each process of the pipeline: wait4 on the shell would report at
    least this benchmark's own size, which a forked child inherits as its starting peak."""
    started = time.perf_counter()
    report = Path(tempfile.mktemp(prefix="rss-"))
    timed = " | ".join(f"/usr/bin/time -a -o {report} -f %M {part.strip()}" for part in command.split(" | "))
    # In a scratch directory: HydraStream keeps its state (download/.states) in the current one.
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {timed}"], stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, check=False, cwd=cwd)  # fmt: skip
    seconds = time.perf_counter() - started
    peaks = [int(line) for line in report.read_text().split() if line.isdigit()] if report.exists() else [0]
    report.unlink(missing_ok=True)
    return seconds, max(peaks), result.returncode


def download_rows(url: str, scratch: Path, size: int) -> list[tuple[str, str]]:
    rangefs = [sys.executable, "-m", "rangefs", "get", "--quiet", "--cache-dir"]
    out = scratch / "out"
    return [
        ("rangefs get -o FILE", " ".join([*rangefs, str(scratch / "c1"), url, "-o", str(out / "f")])),
        ("rangefs get - > /dev/null", " ".join([*rangefs, str(scratch / "c2"), url, "-"]) + " >/dev/null"),
        ("rangefs get - | sha256sum", " ".join([*rangefs, str(scratch / "c3"), url, "-"]) + " | sha256sum"),
        ("aria2c -x8 -s8", f"aria2c -q -x8 -s8 -k1M --allow-overwrite=true -d {out} -o a {url}"),
        ("curl", f"curl -sS -o {out / 'c'} {url}"),
        ("hs -t 8", f"{HS} -t 8 -q -o {out / 'hs'} {url}"),
        ("hs -t 8 --stream > /dev/null", f"{HS} -t 8 -q --stream {url} >/dev/null"),
    ]


def measure_python(base_url: str, access: nginx.AccessLog, scratch: Path) -> list[dict[str, object]]:
    rows = []
    for kind, uri in (("zip", "/archive.zip"), ("parquet", "/table.parquet")):
        for tool in PYTHON_ROWS[kind]:
            work = Path(tempfile.mkdtemp(dir=scratch))
            mark = access.mark()
            command = [sys.executable, __file__, "--one", kind, tool, base_url.rstrip("/") + uri, str(work)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
            traffic = access.traffic_since(mark, uri)
            seconds = json.loads(result.stdout)["seconds"] if result.returncode == 0 else None
            error = result.stderr[-300:] if seconds is None else ""
            rows.append({"what": kind, "tool": tool, "seconds": seconds, "requests": traffic.requests,
                         "bytes": traffic.body_bytes, "error": error})  # fmt: skip
            shutil.rmtree(work, ignore_errors=True)
            print(rows[-1], file=sys.stderr)
    return rows


def measure_downloads(base_url: str, access: nginx.AccessLog, scratch: Path, size: int) -> list[dict[str, object]]:
    rows = []
    url = base_url.rstrip("/") + "/big.bin"
    for tool, command in download_rows(url, scratch, size):
        (scratch / "out").mkdir(exist_ok=True)
        mark = access.mark()
        seconds, rss_kib, code = run_measured(command, scratch / "out")
        traffic = access.traffic_since(mark, "/big.bin")
        rows.append({"what": "get", "tool": tool, "seconds": seconds, "requests": traffic.requests,
                     "bytes": traffic.body_bytes, "connections": traffic.connections, "rss_kib": rss_kib,
                     "exit": code})  # fmt: skip
        print(rows[-1], file=sys.stderr)
        shutil.rmtree(scratch / "out", ignore_errors=True)
        for cache in ("c1", "c2", "c3"):
            shutil.rmtree(scratch / cache, ignore_errors=True)
    return rows


def table(rows: list[dict[str, object]], size: int) -> str:
    lines = [
        "| what | tool | seconds | requests | bytes from nginx | MiB/s | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = row["seconds"]
        shown = f"{seconds:.2f}" if isinstance(seconds, float) else f"failed: {row.get('error', '')[:60]}"
        rate = f"{size / MiB / seconds:.0f}" if row["what"] == "get" and isinstance(seconds, float) else ""
        rss = f"{int(row['rss_kib']) // 1024} MiB" if "rss_kib" in row else ""  # type: ignore[call-overload]
        if row.get("exit"):
            shown += f" (exit {row['exit']})"
        lines.append(f"| {row['what']} | {row['tool']} | {shown} | {row['requests']} | "
                     f"{int(row['bytes']) / MiB:.2f} MiB | {rate} | {rss} |")  # type: ignore[call-overload]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=4, metavar=("KIND", "TOOL", "URL", "SCRATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=512, help="MiB of the downloaded file (default 512)")
    parser.add_argument("--rtt-ms", type=int, default=40)
    parser.add_argument("--rate", default="20m", help="nginx limit_rate per connection for the downloads")
    parser.add_argument("--only", choices=["python", "get"], help="one half")
    args = parser.parse_args()
    if args.one:
        kind, tool, url, scratch = args.one
        print(json.dumps({"seconds": python_row(kind, tool, url, Path(scratch))}))
        return 0
    size = args.size * MiB
    with tempfile.TemporaryDirectory(prefix="rangefs-libbench-") as temporary:
        work = Path(temporary)
        files = work / "files"
        files.mkdir()
        (files / "archive.zip").write_bytes(media.make_zip(2000))
        (files / "table.parquet").write_bytes(media.make_parquet()[0])
        with open(files / "big.bin", "wb") as big:
            for _ in range(args.size):
                big.write(os.urandom(MiB))
        rows: list[dict[str, object]] = []
        profiles = nginx.profiles(args.rtt_ms, args.rate)
        if args.only in (None, "python"):
            with nginx.running_origin(work / "nginx-wan", files, profiles["wan"], f"rfl{os.getpid()}w") as served:
                rows += measure_python(served.base_url, served.access, work)
        if args.only in (None, "get"):
            profile = profiles["wan-throttled"]
            with nginx.running_origin(work / "nginx-thr", files, profile, f"rfl{os.getpid()}t") as served:
                rows += measure_downloads(served.base_url, served.access, work, size)
        print(f"rtt {args.rtt_ms} ms; downloads: {args.size} MiB, nginx limit_rate {args.rate} per connection\n")
        print(table(rows, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

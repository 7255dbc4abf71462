"""Timed 4 KiB reads at seeded random offsets, each in a distinct block; prints the latencies as JSON.

    python benchmarks/randread.py FILE --seed 1 --count 200 [--verify LOCAL_COPY]
    python benchmarks/randread.py http://HOST:PORT/FILE --size BYTES ...

Given a URL instead of a file, each read is one serial range request on one kept-alive connection (stdlib
http.client), warmed by one request before the timed ones: the network's floor for a random read (one
round trip plus the server), with nothing of a filesystem in between.

Run as a separate process by bench.py so that a read stuck on a FUSE mount can be ended by its timeout.
The offsets depend only on the seed, the count and the file size, so a second run repeats the first (warm).
With --verify, each read's bytes are compared with the same range of LOCAL_COPY (outside the timing).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

READ_SIZE = 4096
BLOCK = 1024 * 1024


def offsets(file_size: int, seed: int, count: int) -> list[int]:
    """``count`` read offsets, 4 KiB aligned, each in its own 1 MiB block, in random order."""
    blocks = file_size // BLOCK
    chosen = random.Random(seed).sample(range(blocks), min(count, blocks))
    picker = random.Random(seed + 1)
    return [block * BLOCK + picker.randrange(BLOCK // READ_SIZE) * READ_SIZE for block in chosen]


class RangeReader:
    """``read(size, offset)`` by range requests on one HTTP/1.1 connection, kept alive."""

    def __init__(self, url: str, ca_bundle: Path | None = None) -> None:
        parts = urlsplit(url)
        self.path = parts.path
        self.connection: http.client.HTTPConnection
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
            host, port = parts.hostname or "", parts.port or 443
            self.connection = http.client.HTTPSConnection(host, port, timeout=30, context=context)
        else:
            self.connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=30)

    def read(self, size: int, offset: int) -> bytes:
        self.connection.request("GET", self.path, headers={"Range": f"bytes={offset}-{offset + size - 1}"})
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 206:
            raise RuntimeError(f"HTTP {response.status} for a range request")
        return body

    def close(self) -> None:
        self.connection.close()


def timed_reads(
    source: str, positions: list[int], verify: Path | None, ca_bundle: Path | None = None
) -> dict[str, object]:
    latencies: list[float] = []
    wrong: list[str] = []  # "offset: what differed", for the first few reads that were wrong
    mismatches = 0
    if source.startswith(("http://", "https://")):
        remote = RangeReader(source, ca_bundle)
        remote.read(READ_SIZE, 0)  # the connection is made and warm before the timed reads
        read, close = remote.read, remote.close
    else:
        fd = os.open(source, os.O_RDONLY)
        read, close = (lambda size, offset: os.pread(fd, size, offset)), (lambda: os.close(fd))
    reference = os.open(verify, os.O_RDONLY) if verify else None
    try:
        for position in positions:
            started = time.perf_counter()
            data = read(READ_SIZE, position)
            latencies.append((time.perf_counter() - started) * 1000)
            if reference is None:
                continue
            expected = os.pread(reference, READ_SIZE, position)
            if data != expected:
                mismatches += 1
                if len(wrong) < 5:
                    wrong.append(f"{position}: {_difference(data, expected)}")
    finally:
        close()
        if reference is not None:
            os.close(reference)
    return {"latencies_ms": latencies, "mismatches": mismatches if verify else None, "wrong": wrong}


def _difference(data: bytes, expected: bytes) -> str:
    if len(data) != len(expected):
        return f"{len(data)} bytes instead of {len(expected)}"
    if not data.strip(b"\0"):
        return "all zero bytes"
    first = next(index for index, (got, want) in enumerate(zip(data, expected, strict=True)) if got != want)
    found = expected.find(data[:64]) if len(data) >= 64 else -1
    return f"differs from byte {first}" + (f" (data shifted by {found})" if found > 0 else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a file, or an http:// or https:// URL (then --size is needed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, help="the file's size in bytes (default: stat the file)")
    parser.add_argument("--verify", type=Path, help="a local copy to compare each read with")
    parser.add_argument("--ca-bundle", type=Path, help="the CA to trust for an https:// URL")
    args = parser.parse_args()
    size = args.size if args.size is not None else Path(args.file).stat().st_size
    result = timed_reads(args.file, offsets(size, args.seed, args.count), args.verify, args.ca_bundle)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

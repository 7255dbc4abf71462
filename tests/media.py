"""Real media and archives for the tool tests, made once per test session with Debian's tools."""

from __future__ import annotations

import io
import random
import sqlite3
import subprocess
import tarfile
import zipfile
from pathlib import Path


def make_video(directory: Path) -> dict[str, bytes]:
    """A 3.5-minute H.264 MP4 at 5 Mbit/s (~130 MB, a keyframe every 2 s) with moov at the end, its
    faststart copy, and a 12-second WebM."""
    plain, fast, webm = directory / "plain.mp4", directory / "fast.mp4", directory / "clip.webm"
    source = "testsrc2=size=640x360:rate=25,noise=alls=12:allf=t"
    common = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-t", "210"]
    subprocess.run([*common, "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "5M", "-minrate", "5M",
                    "-maxrate", "5M", "-bufsize", "5M", "-g", "50", "-pix_fmt", "yuv420p", str(plain)],
                   check=True)  # fmt: skip
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(plain), "-c", "copy", "-movflags", "+faststart",
                    str(fast)], check=True)  # fmt: skip
    subprocess.run([*common[:-1], "12", "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8",
                    "-b:v", "8M", "-g", "25", str(webm)], check=True)  # fmt: skip
    return {path.name: path.read_bytes() for path in (plain, fast, webm)}


def make_zip(members: int, *, zip64: bool = False, tiny: bool = False) -> bytes:
    """Stored and deflated members with random content (a few bytes each when ``tiny``); more than 65,535
    members make zipfile write ZIP64 end records."""
    rng = random.Random(members)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", allowZip64=True) as archive:
        for number in range(members):
            method = zipfile.ZIP_STORED if number % 2 else zipfile.ZIP_DEFLATED
            if tiny:
                data = b"%d" % number
            elif number % 2:
                data = rng.randbytes(rng.randrange(2_000, 60_000))
            else:
                data = b"text %d\n" % number * 500
            info = zipfile.ZipInfo(f"dir{number % 20}/member-{number:05d}.dat")
            info.compress_type = method
            with archive.open(info, "w", force_zip64=zip64) as member:
                member.write(data)
    return buffer.getvalue()


def make_sqlite(path: Path, rows: int) -> None:
    """A table of ``rows`` rows of 1,000 random bytes, keyed by id: about rows kB."""
    rng = random.Random(3)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        db.executemany("INSERT INTO items VALUES (?, ?)", ((n, rng.randbytes(1000)) for n in range(rows)))
    sqlite3.connect(path).close()


def make_tar(members: int, member_size: int) -> bytes:
    rng = random.Random(4)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for number in range(members):
            data = rng.randbytes(member_size)
            info = tarfile.TarInfo(f"files/{number:05d}.bin")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_parquet(columns: str = "abcd", rows: int = 512 * 1024) -> tuple[bytes, int]:
    """A Parquet file of incompressible int64 columns (4 MiB each by default) in one row group, and the size of
    the chunk of its third column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(5)
    table = pa.table({name: pa.array([rng.getrandbits(63) for _ in range(rows)], pa.int64()) for name in columns})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=rows, use_dictionary=False, compression="none")
    data = buffer.getvalue()
    chunk = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(2).total_compressed_size
    return data, int(chunk)

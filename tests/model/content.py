"""What each version of a model file holds: seeded pseudo-random bytes, optionally shaped like a format.

A version's bytes are a pure function of (file name, version number, size, shape), so the model can compare
any byte of any read with every version the origin ever held, and explain a wrong read by where its bytes
really came from (``locate``). Two versions differ at about 255 of 256 bytes, so a read of a few bytes
already tells them apart.

A *shape* writes a few structures over the random bytes so that rangefs' format-aware first open has
something to parse: MP4 top-level boxes (``ftyp``, ``mdat``, ``moov``...) whose chain may end anywhere near
the end of the file, a zip end-of-central-directory record (optionally ZIP64) with arbitrary directory
offsets, a Parquet footer with an arbitrary length. The planners must give up or prefetch, never loop.
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from dataclasses import dataclass

MP4_KINDS = (b"ftyp", b"free", b"mdat", b"moov", b"skip")


@dataclass(frozen=True)
class Mp4Shape:
    """Top-level boxes from offset 0: (type, size or None for "up to ``tail`` bytes before EOF", 64-bit)."""

    boxes: tuple[tuple[bytes, int | None, bool], ...]
    tail: int = 0


@dataclass(frozen=True)
class ZipShape:
    """An end-of-central-directory record ``comment`` bytes before EOF; offsets as fractions of the size."""

    comment: int
    directory_start: float
    directory_size: float
    zip64: bool = False


@dataclass(frozen=True)
class ParquetShape:
    """``PAR1`` at the very end, preceded by a little-endian footer length."""

    footer_length: int


Shape = Mp4Shape | ZipShape | ParquetShape | None


def materialize(name: str, number: int, size: int, shape: Shape) -> bytes:
    """The bytes of version ``number`` of ``name`` (cached: versions are immutable)."""
    return _materialize(name, number, size, shape)


@functools.lru_cache(maxsize=64)
def _materialize(name: str, number: int, size: int, shape: Shape) -> bytes:
    seed = zlib.crc32(f"{name}\0{number}".encode())
    data = bytearray(random.Random(seed).randbytes(size))
    if isinstance(shape, Mp4Shape):
        _write_mp4(data, shape)
    elif isinstance(shape, ZipShape):
        _write_zip(data, shape)
    elif isinstance(shape, ParquetShape) and size >= 8:
        data[size - 8 :] = struct.pack("<I", shape.footer_length) + b"PAR1"
    return bytes(data)


def _write_mp4(data: bytearray, shape: Mp4Shape) -> None:
    size = len(data)
    position = 0
    for kind, length, large in shape.boxes:
        header = 16 if large else 8
        if position + header > size:
            return
        box = size - shape.tail - position if length is None else length
        if box < 0:
            return
        if large:
            data[position : position + 16] = struct.pack(">I4sQ", 1, kind, box)
        else:
            data[position : position + 8] = struct.pack(">I4s", min(box, 0xFFFFFFFF), kind)
        if box < header:
            return  # a broken box: the planner must give up here
        position += box


def _write_zip(data: bytearray, shape: ZipShape) -> None:
    size = len(data)
    eocd = size - 22 - shape.comment
    if eocd < 0:
        return
    directory_start = int(shape.directory_start * size)
    directory_size = int(shape.directory_size * size)
    if shape.zip64:
        record = max(0, eocd - 20 - 56)
        if record + 56 <= eocd - 20:
            data[record : record + 56] = b"PK\x06\x06" + bytes(36) + struct.pack("<QQ", directory_size, directory_start)
            data[eocd - 20 : eocd] = b"PK\x06\x07" + struct.pack("<IQI", 0, record, 1)
        directory_start = directory_size = 0xFFFFFFFF
    data[eocd : eocd + 22] = (
        b"PK\x05\x06"
        + bytes(8)
        + struct.pack("<IIH", min(directory_size, 0xFFFFFFFF), min(directory_start, 0xFFFFFFFF), shape.comment)
    )


def matching_runs(data: bytes, expected: bytes, offset: int, granule: int) -> list[tuple[int, int, bool]]:
    """(start, stop, equal) runs, in file offsets, of ``data`` read at ``offset`` against ``expected``
    (the whole version), compared ``granule`` bytes at a time."""
    runs: list[tuple[int, int, bool]] = []
    for start in range(0, len(data), granule):
        piece = data[start : start + granule]
        equal = expected[offset + start : offset + start + len(piece)] == piece
        if runs and runs[-1][2] == equal:
            runs[-1] = (runs[-1][0], offset + start + len(piece), equal)
        else:
            runs.append((offset + start, offset + start + len(piece), equal))
    return runs


def locate(piece: bytes, candidates: dict[str, bytes]) -> list[tuple[str, int]]:
    """Where ``piece`` occurs in the candidate contents (label -> bytes): up to three (label, offset)."""
    found: list[tuple[str, int]] = []
    if len(piece) < 16:
        return found  # too short to mean anything in random bytes
    for label, content in candidates.items():
        position = content.find(piece)
        while position >= 0 and len(found) < 3:
            found.append((label, position))
            position = content.find(piece, position + 1)
    return found

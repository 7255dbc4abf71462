"""What the model test draws: the settings of a test case, file sizes and shapes, offsets and read sizes.

Sizes stay small so a case runs in well under a second: block sizes 4 KiB to 4 MiB, files of 0 to a few
block sizes (6 MiB at most), cache limits of a few blocks. Offsets and sizes are drawn relative to the
file's size and the engine's block size (``Offset``, ``Size``), so that block boundaries, the end of file and
beyond it come up often, and hypothesis shrinks them to readable values.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from tests.model.content import MP4_KINDS, Mp4Shape, ParquetShape, Shape, ZipShape
from tests.model.harness import EngineSettings
from tests.model.origin import VALIDATOR_MODES

KiB = 1024
MiB = 1024 * KiB
BLOCK_SIZES = tuple(4 * KiB << shift for shift in range(11))  # 4 KiB .. 4 MiB
MAX_FILE_SIZE = 6 * MiB
SUFFIXES = (".bin", ".mp4", ".zip", ".parquet")
LONG_TTL = 3600.0


@dataclass(frozen=True)
class FileSpec:
    name: str
    size: int
    validators: str
    shape: Shape


@dataclass(frozen=True)
class Case:
    """The settings drawn once per test case: engines (one, or two sharing one cache dir) and files."""

    engines: tuple[EngineSettings, ...]
    files: tuple[FileSpec, ...]
    # Let background work finish after each step: replays then behave the same (hypothesis shrinks well);
    # without it, prefetches and cache writes race with the next step's reads.
    settle_between_steps: bool = True

    @property
    def metadata_ttl(self) -> float:
        return self.engines[0].metadata_ttl

    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(engine.block_size for engine in self.engines)


@dataclass(frozen=True)
class Offset:
    """Where a read starts: ``at`` bytes, ``block`` k * block size + delta, ``eof`` + delta, ``next`` (the
    handle's last read end) + delta, ``frac`` value/1000 of the file size + delta."""

    kind: str
    value: int = 0
    delta: int = 0

    def resolve(self, file_size: int, block_size: int, last_end: int) -> int:
        base = {
            "at": self.value,
            "block": self.value * block_size,
            "eof": file_size,
            "next": last_end,
            "frac": file_size * self.value // 1000,
        }[self.kind]
        return max(0, base + self.delta)


@dataclass(frozen=True)
class Size:
    """How much a read asks for: ``n`` bytes, ``blocks`` k * block size + delta, ``rest`` of the file + delta."""

    kind: str
    value: int = 0
    delta: int = 0

    def resolve(self, file_size: int, block_size: int, offset: int) -> int:
        base = {"n": self.value, "blocks": self.value * block_size, "rest": max(0, file_size - offset)}[self.kind]
        return max(0, min(base + self.delta, 3 * block_size + 256 * KiB))


offsets = st.one_of(
    st.builds(Offset, st.just("frac"), st.integers(0, 1000), st.just(0)),
    st.builds(Offset, st.just("at"), st.integers(0, 300 * KiB)),
    st.builds(Offset, st.just("block"), st.integers(0, 4), st.integers(-3, 3)),
    st.builds(Offset, st.just("eof"), st.just(0), st.integers(-5000, 100)),
    st.builds(Offset, st.just("next"), st.just(0), st.sampled_from([0, 0, 1, -1, 4096, -4096])),
)
sizes = st.one_of(
    st.builds(Size, st.just("n"), st.sampled_from([1, 4 * KiB, 32 * KiB, 32 * KiB + 1, 64 * KiB, 128 * KiB, 1 * MiB])),
    st.builds(Size, st.just("n"), st.integers(0, 200 * KiB)),
    st.builds(Size, st.just("blocks"), st.integers(0, 2), st.integers(-3, 3)),
    st.builds(Size, st.just("rest"), st.just(0), st.integers(-3, 100)),
)


@st.composite
def file_sizes(draw: st.DrawFn, block_sizes: tuple[int, ...]) -> int:
    """Sizes around block edges of either engine, any size up to a few blocks, tiny files, and sizes where
    block ``i`` of the larger block size is as long as block ``i`` of the smaller (``i * large + small``)."""
    unit = draw(st.sampled_from(sorted(set(block_sizes))))
    kind = draw(st.sampled_from(["blocks", "any", "mixed", "blocks", "any", "small"]))
    if kind == "blocks":
        size = draw(st.integers(0, 4)) * unit + draw(st.integers(-2, 2))
    elif kind == "any":
        size = draw(st.integers(0, 3 * unit))
    elif kind == "mixed" and len(set(block_sizes)) > 1:
        size = (
            draw(st.integers(1, 2)) * max(block_sizes)
            + min(block_sizes)
            + draw(st.integers(-1, 1) | st.integers(0, 64 * KiB))
        )
    else:
        size = draw(st.integers(0, 300))
    return max(0, min(size, MAX_FILE_SIZE))


def shapes(name: str) -> st.SearchStrategy[Shape]:
    if name.endswith(".mp4"):
        # Mostly a real file type box first, and a chain that ends a few bytes before the end of the file.
        kind = st.just(b"ftyp") | st.sampled_from(MP4_KINDS)
        box = st.tuples(kind, st.none() | st.integers(0, 80 * KiB), st.booleans())
        tail = st.integers(0, 8) | st.integers(0, 24)
        return st.builds(Mp4Shape, st.lists(box, min_size=1, max_size=4).map(tuple), tail)
    if name.endswith(".zip"):
        fraction = st.floats(0, 1.2, allow_nan=False)
        return st.builds(ZipShape, st.integers(0, 65535), fraction, fraction, st.booleans())
    if name.endswith(".parquet"):
        return st.builds(ParquetShape, st.integers(0, 100 * KiB) | st.integers(0, 2**32 - 1))
    return st.none()


@st.composite
def file_specs(draw: st.DrawFn, index: int, block_sizes: tuple[int, ...]) -> FileSpec:
    name = f"f{index}{draw(st.sampled_from(SUFFIXES))}"
    return FileSpec(name, draw(file_sizes(block_sizes)), draw(st.sampled_from(VALIDATOR_MODES)), draw(shapes(name)))


@st.composite
def engine_settings(draw: st.DrawFn, block_size: int, ttl: float, cache_size: int | None) -> EngineSettings:
    readahead = draw(st.booleans())
    return EngineSettings(
        block_size=block_size,
        cache_size=cache_size,
        readahead=readahead,
        format_prefetch=readahead and draw(st.sampled_from([True, True, False])),  # on by default in a mount
        metadata_ttl=ttl,
        max_readahead=draw(st.sampled_from([1, 4, 64])) * block_size,
        max_request_size=draw(st.sampled_from([8 * MiB, block_size, 4 * block_size])),
        prefetch_part_size=draw(st.sampled_from([8 * MiB, block_size, 2 * block_size])),
        max_inflight=draw(st.sampled_from([256 * MiB, 4 * block_size])),
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    ttl = draw(st.sampled_from([0.0, LONG_TTL]))
    block_sizes = [draw(st.sampled_from(BLOCK_SIZES))]
    if draw(st.booleans()):  # a second engine on the same cache dir
        block_sizes.append(block_sizes[0] if draw(st.booleans()) else draw(st.sampled_from(BLOCK_SIZES)))
    limit = draw(st.sampled_from([None, None, 1, 2, 3, 6]))
    cache_size = None if limit is None else limit * max(block_sizes)
    engines = tuple(draw(engine_settings(size, ttl, cache_size)) for size in block_sizes)
    count = draw(st.integers(1, 3))
    files = tuple(draw(file_specs(index, tuple(block_sizes))) for index in range(count))
    return Case(engines, files, draw(st.booleans()))

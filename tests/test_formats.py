"""The format planners find exactly the index structures, from the bytes a reader would see."""

from __future__ import annotations

import io
import logging
import struct
import zipfile
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from rangefs.blocks import BlockStore, RangeSource
from rangefs.ranges import ByteRange
from rangefs.readahead.formats import MAX_FEEDS, Mp4Planner, ParquetPlanner, Planner, ZipPlanner, planner_for
from rangefs.readahead.prefetcher import Prefetcher


def drive(planner: Planner, data: bytes) -> list[ByteRange]:
    """Run a plan as the prefetcher does, from ``data`` cut at EOF, checking every step; the ranges asked for."""
    asked: list[ByteRange] = []
    while (need := planner.next_range()) is not None:
        assert len(asked) < MAX_FEEDS, "still asking past the step bound"
        assert 0 <= need.start <= need.stop <= len(data), f"asked for {need} outside the file"
        assert need not in asked, f"asked again for {need}, which it was already fed"
        asked.append(need)
        planner.feed(need.start, data[need.start : need.stop])
    for wanted in planner.wanted():
        assert 0 <= wanted.start < wanted.stop <= len(data), f"wants {wanted} outside the file"
    return asked


def run(planner: Planner, data: bytes) -> list[ByteRange]:
    drive(planner, data)
    return planner.wanted()


def make_zip(members: int, *, zip64: bool = False, comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", allowZip64=True) as archive:
        for number in range(members):
            with archive.open(f"m{number}.txt", "w", force_zip64=zip64) as member:
                member.write(b"x" * (number % 7))
        archive.comment = comment
    return buffer.getvalue()


@pytest.mark.parametrize(("zip64", "comment"), [(False, b""), (True, b""), (False, b"c" * 60_000)])
def test_zip_planner_finds_the_central_directory(zip64: bool, comment: bytes) -> None:
    data = make_zip(300, zip64=zip64, comment=comment)
    wanted = run(ZipPlanner(len(data)), data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        first_entry = min(info.header_offset for info in archive.infolist())
    central = wanted[0]
    assert data[central.start : central.start + 4] == b"PK\x01\x02", "starts at the first directory entry"
    assert central.start > first_entry
    assert wanted[-1].stop == len(data)


def test_non_zip_is_left_alone() -> None:
    data = b"not a zip" * 1000
    assert run(ZipPlanner(len(data)), data) == []


def box(kind: bytes, payload_size: int, large: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, kind, payload_size + 16) + b"\0" * payload_size
    return struct.pack(">I4s", payload_size + 8, kind) + b"\0" * payload_size


@pytest.mark.parametrize("large_mdat", [False, True])
def test_mp4_planner_finds_moov_at_the_end(large_mdat: bool) -> None:
    head = box(b"ftyp", 16) + box(b"free", 8)
    mdat = box(b"mdat", 5_000_000, large=large_mdat)
    moov = box(b"moov", 30_000)
    data = head + mdat + box(b"free", 100) + moov
    planner = Mp4Planner(len(data))
    looked_at = []
    while (need := planner.next_range()) is not None:
        looked_at.append(need)
        planner.feed(need.start, data[need.start : need.stop])
    assert planner.wanted() == [ByteRange(len(data) - len(moov), len(data))]
    assert sum(r.length for r in looked_at) < 70_000, "only headers are read on the way"


def test_mp4_planner_faststart_and_garbage() -> None:
    data = box(b"ftyp", 16) + box(b"moov", 1000) + box(b"mdat", 100_000)
    assert run(Mp4Planner(len(data)), data) == [ByteRange(24, 24 + 1008)]
    junk = b"\x00\x00\x00\x10notanmp4" + b"\0" * 100
    assert run(Mp4Planner(len(junk)), junk) == []


_LARGE_HEADER = struct.pack(">I4s", 1, b"mdat")  # a box header saying a 64-bit size follows


@pytest.mark.parametrize("mdat_size", [1_000, 100_000], ids=["in-first-read", "past-first-read"])
@pytest.mark.parametrize(
    "tail",
    [b"xyz", b"\0" * 7, _LARGE_HEADER, _LARGE_HEADER + b"\0" * 7],
    ids=["3-bytes", "7-bytes", "large-header", "large-header-15-bytes"],
)
def test_mp4_planner_ends_at_a_header_that_cannot_fit_before_eof(tail: bytes, mdat_size: int) -> None:
    """Regression: the walk asked for the same few bytes before EOF forever, which froze the whole mount."""
    data = box(b"ftyp", 16) + box(b"mdat", mdat_size) + tail
    planner = Mp4Planner(len(data))
    asked: list[ByteRange] = []
    while (need := planner.next_range()) is not None:
        assert need not in asked, f"asked again for {need}, which it was already fed"
        asked.append(need)
        planner.feed(need.start, data[need.start : need.stop])
    assert planner.wanted() == []


class _StuckPlanner(Planner):
    """A planner with the bug the step bound exists for: it asks for the same byte forever."""

    def __post_init__(self) -> None:
        self._need = ByteRange(0, 1)

    def _feed(self, offset: int, data: bytes) -> None:
        pass


def test_a_plan_that_keeps_asking_is_abandoned_after_max_feeds() -> None:
    planner = _StuckPlanner(10)
    while planner.next_range() is not None:
        planner.feed(0, b"x")
    assert planner.feeds == MAX_FEEDS
    assert planner.wanted() == []
    planner.feed(0, b"x")
    assert planner.feeds == MAX_FEEDS, "a finished plan ignores further feeds"


@pytest.mark.parametrize("fault", ["short", "elsewhere"])
def test_a_feed_that_does_not_cover_the_range_asked_ends_the_plan(fault: str) -> None:
    data = make_zip(3)
    planner = ZipPlanner(len(data))
    need = planner.next_range()
    assert need is not None
    if fault == "short":
        planner.feed(need.start, data[need.start : need.stop - 1])
    else:
        planner.feed(need.start + 1, data[need.start + 1 : need.stop])
    assert planner.next_range() is None
    assert planner.wanted() == []


def test_a_feed_covering_more_than_asked_is_cut_to_the_range() -> None:
    data = make_zip(300, comment=b"c" * 65_000)
    planner = ZipPlanner(len(data))
    assert planner.next_range() != ByteRange(0, len(data))
    for _ in range(3):  # end records, the wider search a comment needs, the directory
        planner.feed(0, data)
    assert planner.next_range() is None
    assert planner.wanted() == run(ZipPlanner(len(data)), data)
    assert planner.wanted()


@pytest.mark.parametrize(("zip64", "comment"), [(False, b""), (True, b""), (False, b"c" * 60_000)])
def test_zip_planner_reads_exactly_the_end_records_and_the_directory(zip64: bool, comment: bytes) -> None:
    data = make_zip(300, zip64=zip64, comment=comment)
    planner = ZipPlanner(len(data))
    asked = drive(planner, data)
    directory = planner.wanted()[0]
    assert asked[-1] == ByteRange(directory.start, asked[-2].start), "the directory, less what was read before"
    assert asked[0].length <= 8 * 1024, "the end records first, one round trip's worth"
    assert len(asked) == (3 if comment else 2)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        headers = sorted(info.header_offset for info in archive.infolist())
    assert [extent.start for extent in planner.extents()] == headers
    assert [extent.stop for extent in planner.extents()] == [*headers[1:], directory.start]


def test_a_damaged_directory_gives_no_member_extents() -> None:
    data = bytearray(make_zip(300))  # a directory larger than the first read
    planner = ZipPlanner(len(data))
    first = planner.next_range()
    assert first is not None
    planner.feed(first.start, bytes(data[first.start : first.stop]))
    directory = planner.next_range()
    assert directory is not None
    data[directory.start + 50] ^= 0xFF  # inside the first entry's name: the second entry's signature moves
    data[directory.start] ^= 0xFF
    planner.feed(directory.start, bytes(data[directory.start : directory.stop]))
    assert planner.extents() == []
    assert planner.wanted(), "the directory is still prefetched"


def test_mp4_planner_with_many_boxes_past_the_first_read_gives_up_within_the_bound() -> None:
    data = box(b"ftyp", 16) + box(b"mdat", 70_000) + box(b"free", 0) * 200 + box(b"moov", 100)
    planner = Mp4Planner(len(data))
    assert len(drive(planner, data)) == MAX_FEEDS
    assert planner.wanted() == []


# Property tests: whatever the bytes, a plan ends within MAX_FEEDS, never raises, and asks and wants only
# bytes of the file (``drive`` checks each). Near-valid files reach the parsers' later branches, which
# random bytes almost never do.
_U32 = st.integers(0, 2**32 - 1) | st.integers(0, 400) | st.just(0xFFFFFFFF)
_U64 = st.integers(0, 2**64 - 1) | st.integers(0, 400)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000))
def test_planners_end_on_random_bytes(data: bytes) -> None:
    for planner in (ZipPlanner(len(data)), Mp4Planner(len(data)), ParquetPlanner(len(data))):
        drive(planner, data)


_BOX_KINDS = st.sampled_from([b"moov", b"mdat", b"free"]) | st.binary(min_size=4, max_size=4)
# Mostly true sizes, so that walks get far; otherwise a few bytes off, "to EOF" (0), "64-bit follows" (1), or any.
_SIZE_FAULTS = st.sampled_from(["none", "none", "none", "near", "zero-or-one", "any"])


@st.composite
def mp4_files(draw: st.DrawFn) -> bytes:
    """Top-level boxes, mostly after an ftyp, with true or faulty sizes (32- or 64-bit), then trailing bytes."""
    parts = []
    for kind in [draw(st.just(b"ftyp") | _BOX_KINDS), *draw(st.lists(_BOX_KINDS, max_size=6))]:
        # Some boxes are larger than the first read, so the walk goes on with header-sized reads.
        payload_size = draw(st.integers(0, 64) | st.sampled_from([65_536, 70_000]))
        payload = draw(st.binary(max_size=min(payload_size, 16)))
        payload += b"\0" * (payload_size - len(payload))
        large = draw(st.booleans())
        size = payload_size + (16 if large else 8)
        fault = draw(_SIZE_FAULTS)
        if fault == "near":
            size = draw(st.integers(max(0, size - 9), size + 9))
        elif fault == "zero-or-one":
            size = draw(st.sampled_from([0, 1]))
        elif fault == "any":
            size = draw(st.integers(0, 2**64 - 1 if large else 2**32 - 1))
        header = struct.pack(">I4sQ", 1, kind, size) if large else struct.pack(">I4s", size, kind)
        parts.append(header + payload)
    parts.append(draw(st.binary(max_size=20)))
    return b"".join(parts)


@settings(max_examples=1000, deadline=None)
@given(mp4_files())
def test_mp4_planner_ends_on_near_valid_files(data: bytes) -> None:
    planner = Mp4Planner(len(data))
    drive(planner, data)
    for wanted in planner.wanted():
        assert data[wanted.start + 4 : wanted.start + 8] == b"moov"


@st.composite
def zip_tails(draw: st.DrawFn) -> bytes:
    """An EOCD with arbitrary directory size and offset, perhaps after a ZIP64 record and locator pointing
    anywhere, perhaps cut short; after a body that may push the start of the file out of the search window."""
    body = b"\0" * draw(st.sampled_from([0, 70_000])) + draw(st.binary(max_size=200))
    parts = [body]
    if draw(st.booleans()):
        record = b"PK\x06\x06" + struct.pack("<Q", 44) + b"\0" * 28 + struct.pack("<QQ", draw(_U64), draw(_U64))
        record_at = len(body)
        parts.append(record[: draw(st.sampled_from([56, 40, 10]))])
        pointer = draw(st.just(record_at) | st.integers(max(0, record_at - 60), record_at + 60) | _U64)
        parts.append(b"PK\x06\x07" + struct.pack("<IQI", 0, pointer, 1))
        cd_size = draw(st.just(0xFFFFFFFF) | _U32)
        cd_offset = draw(st.just(0xFFFFFFFF) | _U32)
    else:
        cd_size, cd_offset = draw(_U32), draw(_U32)
    comment = draw(st.binary(max_size=40))
    parts.append(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, cd_size, cd_offset, len(comment)) + comment)
    data = b"".join(parts)
    return data[: len(data) - draw(st.integers(0, 25))]


@settings(max_examples=1000, deadline=None)
@given(zip_tails())
def test_zip_planner_ends_on_near_valid_files(data: bytes) -> None:
    planner = ZipPlanner(len(data))
    drive(planner, data)
    if planner.wanted():
        eocd = planner.wanted()[-1]
        assert data[eocd.start : eocd.start + 4] == b"PK\x05\x06"


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 5),
    st.booleans(),
    st.lists(st.tuples(st.integers(1, 120), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_zip_planner_ends_on_real_archives_with_a_damaged_tail(
    members: int, zip64: bool, damage: list[tuple[int, int]]
) -> None:
    damaged = bytearray(make_zip(members, zip64=zip64))
    for distance, value in damage:
        damaged[-min(distance, len(damaged))] = value
    drive(ZipPlanner(len(damaged)), bytes(damaged))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), _U32, st.binary(max_size=8), st.integers(0, 12))
def test_parquet_planner_ends_on_near_valid_files(body: bytes, length: int, tail: bytes, cut: int) -> None:
    data = b"PAR1" + body + struct.pack("<I", length) + b"PAR1" + tail
    data = data[: len(data) - cut]
    planner = ParquetPlanner(len(data))
    drive(planner, data)
    if planner.wanted():
        assert data[-4:] == b"PAR1"


def test_parquet_footer() -> None:
    footer = b"F" * 500
    data = b"PAR1" + b"d" * 10_000 + footer + struct.pack("<I", len(footer)) + b"PAR1"
    assert run(ParquetPlanner(len(data)), data) == [ByteRange(len(data) - 508, len(data))]


def test_planner_choice_by_name() -> None:
    assert isinstance(planner_for("a/b/Data.ZIP", 1000), ZipPlanner)
    assert isinstance(planner_for("talk.mp4", 1000), Mp4Planner)
    assert planner_for("notes.txt", 1000) is None


# The prefetcher's side: it runs a plan as a background task, which must contain a planner's failures.
_URL = "http://origin/talk.mp4"


class _CachedStore:
    """The BlockStore seam a plan uses; every read is a cache hit, which returns without a trio checkpoint."""

    block_size = 1024 * 1024

    def start_fetches(self, source: RangeSource, wanted: object, *, piece_size: int = 0, demand: bool) -> None:
        return None

    def block_key(self, source: RangeSource, index: int) -> int:
        return index

    def is_at_hand(self, key: object) -> bool:
        return True

    async def read(self, source: RangeSource, offset: int, size: int, *, piece_size: int = 0) -> bytes:
        return bytes(size)


class _Source:
    object_id = "talk.mp4@1"

    def describe(self) -> dict[str, object]:
        return {"url": _URL}


def _run_plan(planner: Planner, *also: Callable[[], Awaitable[object]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            store = cast(BlockStore, _CachedStore())
            prefetcher = Prefetcher(store, max_inflight_bytes=1 << 20, part_size=1 << 20, nursery=nursery)
            prefetcher.plan_index(cast(RangeSource, _Source()), planner)
            for task in also:
                nursery.start_soon(task)

    trio.run(main)


class _BrokenPlanner(Planner):
    def __post_init__(self) -> None:
        self._need = ByteRange(0, 8)

    def _feed(self, offset: int, data: bytes) -> None:
        raise struct.error("a planner bug")


def test_a_planner_that_raises_ends_its_plan_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rangefs.readahead.prefetcher"):
        _run_plan(_BrokenPlanner(100))
    assert [(record.levelno, _URL in record.getMessage()) for record in caplog.records] == [(logging.WARNING, True)]


class _EndlessPlanner(Planner):
    """Ignores ``done``, so the step bound cannot end it: only the prefetcher's checkpoint lets ``stop`` run."""

    def __post_init__(self) -> None:
        self.stopped = False

    def next_range(self) -> ByteRange | None:
        return None if self.stopped else ByteRange(0, 1)

    def _feed(self, offset: int, data: bytes) -> None:
        if self.feeds > 10_000:
            raise AssertionError("the plan never let another task run")  # ends the test rather than hang it


def test_a_plan_of_cached_reads_still_lets_other_tasks_run() -> None:
    planner = _EndlessPlanner(100)

    async def stop() -> None:
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        planner.stopped = True

    _run_plan(planner, stop)
    assert planner.stopped
    assert planner.feeds < 100

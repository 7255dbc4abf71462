"""The format planners find exactly the index structures, from the bytes a reader would see."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangefs.ranges import ByteRange
from rangefs.readahead.formats import MAX_FEEDS, Mp4Planner, ParquetPlanner, Planner, ZipPlanner, planner_for


def run(planner: Planner, data: bytes) -> list[ByteRange]:
    steps = 0
    while (need := planner.next_range()) is not None:
        planner.feed(need.start, data[need.start : need.stop])
        steps += 1
        assert steps < 50
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
    planner.feed(0, data)
    assert planner.wanted() == run(ZipPlanner(len(data)), data)
    assert planner.wanted()


@given(st.binary(min_size=22, max_size=3000))
def test_planners_never_ask_outside_the_file_nor_crash(data: bytes) -> None:
    for planner in (ZipPlanner(len(data)), Mp4Planner(len(data)), ParquetPlanner(len(data))):
        steps = 0
        while (need := planner.next_range()) is not None and steps < 100:
            assert 0 <= need.start <= need.stop <= len(data)
            planner.feed(need.start, data[need.start : need.stop])
            steps += 1
        for wanted in planner.wanted():
            assert 0 <= wanted.start < wanted.stop <= len(data)


def test_parquet_footer() -> None:
    footer = b"F" * 500
    data = b"PAR1" + b"d" * 10_000 + footer + struct.pack("<I", len(footer)) + b"PAR1"
    assert run(ParquetPlanner(len(data)), data) == [ByteRange(len(data) - 508, len(data))]


def test_planner_choice_by_name() -> None:
    assert isinstance(planner_for("a/b/Data.ZIP", 1000), ZipPlanner)
    assert isinstance(planner_for("talk.mp4", 1000), Mp4Planner)
    assert planner_for("notes.txt", 1000) is None

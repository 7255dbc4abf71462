"""Property tests of the pure byte-range maths against a byte-by-byte model."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from rangefs.ranges import (
    ByteRange,
    block_count,
    block_range,
    blocks_covering,
    clamp_read,
    covered_bytes,
    merged,
    missing,
    run_bytes,
    runs,
)

sizes = st.integers(0, 50_000)
block_sizes = st.integers(1, 5_000)


@given(file_size=sizes, block_size=block_sizes, offset=st.integers(0, 60_000), size=st.integers(0, 60_000))
def test_covering_blocks_are_exactly_those_holding_read_bytes(
    file_size: int, block_size: int, offset: int, size: int
) -> None:
    wanted = clamp_read(offset, size, file_size)
    readable = range(offset, min(offset + size, file_size))  # the bytes a read may return
    assert (wanted.start, wanted.stop) == (readable.start, readable.stop) or (wanted.length == len(readable) == 0)
    model = sorted({byte // block_size for byte in readable})
    assert list(blocks_covering(wanted, block_size)) == model


@given(file_size=st.integers(1, 50_000), block_size=block_sizes)
def test_blocks_tile_the_file(file_size: int, block_size: int) -> None:
    position = 0
    for index in range(block_count(file_size, block_size)):
        block = block_range(index, block_size, file_size)
        assert block.start == position and 0 < block.length <= block_size
        position = block.stop
    assert position == file_size


@given(indices=st.sets(st.integers(0, 200)), max_run=st.integers(1, 20))
def test_runs_partition_indices_into_bounded_consecutive_groups(indices: set[int], max_run: int) -> None:
    grouped = list(runs(sorted(indices), max_run))
    assert [i for run in grouped for i in run] == sorted(indices)
    assert all(1 <= len(run) <= max_run for run in grouped)
    # Maximal: two neighbouring runs are only split where indices have a gap or the run is full.
    for left, right in itertools.pairwise(grouped):
        assert right.start > left.stop or len(left) == max_run


@given(block_size=block_sizes, file_size=st.integers(1, 50_000), data=st.data())
def test_run_bytes_is_the_union_of_its_blocks(block_size: int, file_size: int, data: st.DataObject) -> None:
    count = block_count(file_size, block_size)
    first = data.draw(st.integers(0, count - 1))
    last = data.draw(st.integers(first, count - 1))
    span = run_bytes(range(first, last + 1), block_size, file_size)
    assert span == ByteRange(
        block_range(first, block_size, file_size).start, block_range(last, block_size, file_size).stop
    )


def test_range_header_is_inclusive() -> None:
    assert ByteRange(0, 1).header_value() == "bytes=0-0"
    assert ByteRange(1024, 2048).header_value() == "bytes=1024-2047"


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50)), max_size=20))
def test_covered_bytes_counts_each_byte_once(pieces: list[tuple[int, int]]) -> None:
    ranges = [ByteRange(start, start + length) for start, length in pieces]
    assert covered_bytes(ranges) == len({byte for piece in ranges for byte in range(piece.start, piece.stop)})


def _bytes(ranges: list[ByteRange]) -> set[int]:
    return {byte for piece in ranges for byte in range(piece.start, piece.stop)}


pieces = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50)), max_size=20)


@given(pieces)
def test_merged_is_the_union_as_sorted_separate_ranges(spans: list[tuple[int, int]]) -> None:
    ranges = [ByteRange(start, start + length) for start, length in spans]
    union = merged(ranges)
    assert _bytes(union) == _bytes(ranges)
    assert all(piece.length > 0 for piece in union)
    assert all(left.stop < right.start for left, right in itertools.pairwise(union))  # apart, not touching


@given(st.integers(0, 250), st.integers(0, 250), pieces)
def test_missing_is_what_no_present_range_covers(start: int, length: int, spans: list[tuple[int, int]]) -> None:
    wanted = ByteRange(start, start + length)
    present = [ByteRange(first, first + size) for first, size in spans]
    holes = missing(wanted, present)
    assert _bytes(holes) == set(range(wanted.start, wanted.stop)) - _bytes(present)
    assert holes == merged(holes)

"""Property tests of the readahead policy (pure: traces in, decisions out)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rangefs.readahead.pattern import AccessPattern, Prefetch, ReadaheadConfig

KiB, MiB = 1024, 1024 * 1024
CONFIG = ReadaheadConfig(block_size=MiB, max_window=64 * MiB, request_size=8 * MiB)


def run(trace: list[tuple[int, int]], file_size: int, config: ReadaheadConfig = CONFIG) -> list[tuple[int, Prefetch]]:
    """Feed a trace; returns (read end, prefetch) for every prefetch decided."""
    pattern = AccessPattern(config, file_size)
    decided = []
    for offset, size in trace:
        decision = pattern.on_read(offset, size)
        if decision.prefetch:
            decided.append((min(offset + size, file_size), decision.prefetch))
    return decided


reads = st.tuples(st.integers(0, 300 * MiB), st.integers(1, 2 * MiB))


@given(trace=st.lists(reads, max_size=200), file_size=st.integers(1, 300 * MiB))
def test_never_past_eof_nor_beyond_the_window(trace: list[tuple[int, int]], file_size: int) -> None:
    for read_end, prefetch in run(trace, file_size):
        assert 0 <= prefetch.start < prefetch.stop <= file_size
        assert prefetch.start % MiB == 0
        assert prefetch.stop - read_end <= CONFIG.max_window + CONFIG.block_size


@given(slots=st.lists(st.integers(0, 99), unique=True, max_size=100), data=st.data())
def test_random_reads_prefetch_nothing(slots: list[int], data: st.DataObject) -> None:
    # Reads at least three blocks apart from every earlier read: no two are near each other.
    trace = [
        (slot * 3 * MiB + data.draw(st.integers(0, MiB // 2)), data.draw(st.integers(1, 64 * KiB))) for slot in slots
    ]
    assert run(trace, 300 * MiB) == []


@settings(deadline=None, max_examples=40)
@given(blocks=st.integers(1, 1024), read_size=st.sampled_from([64 * KiB, 128 * KiB, MiB]))
def test_sequential_trace_grows_logarithmically_and_covers_each_byte_once(blocks: int, read_size: int) -> None:
    size = blocks * MiB
    pattern = AccessPattern(CONFIG, size)
    fetched: set[int] = set()  # blocks fetched so far, by demand or prefetch
    demand_blocks = 0
    for offset in range(0, size, read_size):
        decision = pattern.on_read(offset, read_size)
        needed = set(range(offset // MiB, (min(offset + read_size, size) - 1) // MiB + 1))
        demand_blocks += len(needed - fetched)
        fetched |= needed
        if decision.prefetch:
            prefetched = set(range(decision.prefetch.start // MiB, -(-decision.prefetch.stop // MiB)))
            assert not prefetched & fetched, "no block is fetched twice"
            fetched |= prefetched
    assert fetched == set(range(blocks))
    assert demand_blocks <= CONFIG.confirm_reads + 1, "once confirmed, readahead stays ahead of the reader"
    assert pattern.stats.streams_created == 1
    assert pattern.stats.window_growths <= math.ceil(math.log2(CONFIG.max_window / CONFIG.block_size))
    assert pattern.stats.prefetches <= blocks * MiB // CONFIG.request_size + 8


@given(blocks=st.integers(4, 48), data=st.data())
def test_kernel_style_reordering_keeps_one_stream(blocks: int, data: st.DataObject) -> None:
    # 128 KiB reads arriving out of order, as concurrent kernel readahead requests do: each may overtake
    # reads up to 896 KiB before it, so none arrives more than 1 MiB behind the furthest read so far.
    # The first read is the application's own and comes first.
    offsets = list(range(128 * KiB, blocks * MiB, 128 * KiB))
    jitter = data.draw(st.lists(st.integers(0, 896 * KiB), min_size=len(offsets), max_size=len(offsets)))
    offsets = [0] + [
        offset for _, offset in sorted(zip([o - j for o, j in zip(offsets, jitter, strict=True)], offsets, strict=True))
    ]
    pattern = AccessPattern(CONFIG, blocks * MiB)
    for offset in offsets:
        pattern.on_read(offset, 128 * KiB)
    assert pattern.stats.streams_created == 1
    assert pattern.stats.prefetches > 0


def test_two_interleaved_streams_both_get_readahead() -> None:
    pattern = AccessPattern(CONFIG, 1024 * MiB)
    video, audio = 0, 700 * MiB
    streams = set()
    for step in range(64):
        for base in (video, audio):
            decision = pattern.on_read(base + step * 256 * KiB, 256 * KiB)
            if decision.prefetch:
                streams.add(decision.prefetch.stream_id)
    assert len(streams) == 2 and pattern.stats.streams_created == 2


def test_oldest_stream_is_dropped_and_reported() -> None:
    config = ReadaheadConfig(block_size=MiB, max_streams=2, request_size=8 * MiB)
    pattern = AccessPattern(config, 100 * MiB)
    assert pattern.on_read(0, 4096).dropped_streams == ()
    assert pattern.on_read(50 * MiB, 4096).dropped_streams == ()
    assert pattern.on_read(90 * MiB, 4096).dropped_streams == (1,)
    assert pattern.stream_ids == [2, 3]


@given(rate_kib=st.integers(64, 4096), read_size=st.sampled_from([32 * KiB, 128 * KiB]))
def test_slow_readers_keep_about_a_second_ahead(rate_kib: int, read_size: int) -> None:
    # A reader consuming rate_kib KiB/s (a video player) for 30 s.
    pattern = AccessPattern(CONFIG, 1024 * MiB)
    rate = rate_kib * KiB
    for number in range(int(30 * rate / read_size)):
        offset = number * read_size
        decision = pattern.on_read(offset, read_size, now=offset / rate)
        if decision.prefetch:
            ahead = decision.prefetch.stop - (offset + read_size)
            assert ahead <= max(MiB, rate) + 2 * MiB, "no more than a second of consumption (plus rounding)"


def test_fast_readers_reach_the_full_window() -> None:
    pattern = AccessPattern(CONFIG, 1024 * MiB)
    furthest = 0
    for number in range(600):  # 600 MiB at 300 MiB/s
        offset = number * MiB
        decision = pattern.on_read(offset, MiB, now=offset / (300 * MiB))
        if decision.prefetch:
            furthest = max(furthest, decision.prefetch.stop - offset - MiB)
    assert furthest >= CONFIG.max_window - CONFIG.request_size


def _furthest_ahead_within(seconds: float, *, waits: bool) -> int:
    """A reader held to 4 MiB/s: by the network (each read waits for its bytes) or by its own pace."""
    pattern = AccessPattern(CONFIG, 1024 * MiB)
    furthest, rate, number = 0, 4 * MiB, 0
    while (now := number * MiB / rate) < seconds:
        decision = pattern.on_read(number * MiB, MiB, now=now)
        if waits:
            pattern.waited(decision.stream_id, 0.9 * MiB / rate)
        if decision.prefetch:
            furthest = max(furthest, decision.prefetch.stop - (number + 1) * MiB)
        number += 1
    return furthest


def test_a_reader_waiting_for_the_network_is_not_taken_for_a_slow_one() -> None:
    # Both read 4 MiB/s. Capped by its own measured pace, a cold `cat` on a slow start would only ever get
    # a window of what the first round trips delivered; the one that waited for its bytes gets the window
    # grown, the video player that reads what is there keeps about a second ahead.
    # Waiting 90 % of the time, its own pace is 40 MiB/s: a window of about that, not of 4 MiB, once it has
    # read two requests' worth (16 MiB: 4 s); before, both are treated alike (a player's first frame waits too).
    assert _furthest_ahead_within(3.5, waits=True) == _furthest_ahead_within(3.5, waits=False)
    assert _furthest_ahead_within(6.0, waits=True) >= 24 * MiB
    assert _furthest_ahead_within(6.0, waits=False) <= 4 * MiB + 2 * MiB


@given(
    read_size=st.sampled_from([128 * KiB, MiB]),
    waits=st.lists(st.floats(0, 0.5), min_size=1, max_size=100),
)
def test_waiting_only_ever_widens_the_window(read_size: int, waits: list[float]) -> None:
    waiting, plain = AccessPattern(CONFIG, 1024 * MiB), AccessPattern(CONFIG, 1024 * MiB)
    reach = {id(waiting): 0, id(plain): 0}
    for number, wait in enumerate(waits):
        for pattern in (waiting, plain):
            decision = pattern.on_read(number * read_size, read_size, now=number * 0.05)
            if decision.prefetch:
                reach[id(pattern)] = decision.prefetch.stop
            if pattern is waiting:
                pattern.waited(decision.stream_id, wait)
        assert reach[id(waiting)] >= reach[id(plain)]


@given(gaps=st.lists(st.integers(16 * KiB, 4 * MiB), min_size=1, max_size=300))
def test_sparse_increasing_reads_prefetch_nothing(gaps: list[int]) -> None:
    # SQLite walking a B-tree: 4 KiB pages in increasing order with gaps between them.
    pattern = AccessPattern(CONFIG, 2048 * MiB)
    offset = 0
    for gap in gaps:
        assert pattern.on_read(offset, 4 * KiB, now=offset / MiB).prefetch is None
        offset += 4 * KiB + gap

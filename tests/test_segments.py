"""Model-based test of the download's segment plan: connections take segments and halves of segments in any
order and write any amount; no byte is ever given to two connections, none is lost, and the plan hands out
work until only short remainders are left."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rangefs.download.segments import Segment, SegmentPlan, bridged
from rangefs.ranges import ByteRange, merged

holes = st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 400)), min_size=1, max_size=6).map(
    lambda spans: merged(ByteRange(start, start + length) for start, length in spans)
)


def _bytes(ranges: list[ByteRange]) -> set[int]:
    return {byte for piece in ranges for byte in range(piece.start, piece.stop)}


class SegmentPlanMachine(RuleBasedStateMachine):
    @initialize(missing=holes, workers=st.integers(1, 8), min_split=st.integers(1, 64))
    def plan(self, missing: list[ByteRange], workers: int, min_split: int) -> None:
        self.missing = _bytes(missing)
        self.min_split = min_split
        self.segments = SegmentPlan(missing, workers, min_split)
        self.working: list[Segment] = []
        self.written: set[int] = set()
        self.exhausted = False

    @rule()
    def take(self) -> None:
        before = _bytes(self.segments.outstanding())
        segment = self.segments.take()
        if segment is None:
            # Nothing left worth a connection: every remainder is too short to halve.
            assert all(working.remaining < 2 * self.min_split for working in self.working)
            self.exhausted = not self.working
            return
        assert segment.position == segment.start < segment.stop
        mine = set(range(segment.start, segment.stop))
        assert mine <= before  # only bytes nobody has written
        for other in self.working:
            assert not mine & set(range(other.position, other.stop))  # nor another connection's
        self.working.append(segment)

    @precondition(lambda self: self.working)
    @rule(which=st.integers(0, 7), amount=st.integers(1, 500))
    def write(self, which: int, amount: int) -> None:
        segment = self.working[which % len(self.working)]
        count = min(amount, segment.remaining)
        wrote = set(range(segment.position, segment.position + count))
        assert not wrote & self.written
        self.written |= wrote
        segment.position += count
        if segment.finished:
            self.working.remove(segment)

    @invariant()
    def every_byte_is_written_or_outstanding_once(self) -> None:
        outstanding = _bytes(self.segments.outstanding())
        assert not outstanding & self.written
        assert outstanding | self.written == self.missing

    @invariant()
    def done_when_exhausted(self) -> None:
        if self.exhausted:
            assert self.written == self.missing


TestSegmentPlan = SegmentPlanMachine.TestCase
TestSegmentPlan.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


@given(holes, st.integers(1, 8), st.integers(1, 64), st.randoms(use_true_random=False))
def test_connections_writing_at_any_pace_write_every_byte_once(
    missing: list[ByteRange], workers: int, min_split: int, pace: object
) -> None:
    import random

    assert isinstance(pace, random.Random)
    plan = SegmentPlan(missing, workers, min_split)
    connections: list[Segment | None] = [None] * workers
    written: list[int] = []
    for _ in range(100_000):  # bounded: every step writes a byte or ends a connection
        idle = [index for index, segment in enumerate(connections) if segment is None]
        for index in idle:
            connections[index] = plan.take()
        busy = [index for index, segment in enumerate(connections) if segment is not None]
        if not busy:
            break
        index = pace.choice(busy)
        segment = connections[index]
        assert segment is not None
        count = min(segment.remaining, pace.randint(1, 100))
        written += range(segment.position, segment.position + count)
        segment.position += count
        if segment.finished:
            connections[index] = None
    assert sorted(written) == sorted(_bytes(missing))  # each byte once, none missing
    assert plan.outstanding() == []


@given(holes, st.integers(1, 300))
def test_bridged_fills_only_short_spaces_between_holes(missing: list[ByteRange], gap: int) -> None:
    joined = bridged(missing, gap)
    assert _bytes(missing) <= _bytes(joined)
    assert all(right.start - left.stop >= gap for left, right in itertools.pairwise(joined))
    spaces = merged(
        ByteRange(left.stop, right.start)
        for left, right in itertools.pairwise(missing)
        if right.start - left.stop < gap
    )
    assert _bytes(joined) - _bytes(missing) == _bytes(spaces)  # nothing else was added

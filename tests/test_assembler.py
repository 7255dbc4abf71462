"""RunAssembler against a model: however the bytes of a run are chunked, each piece comes out whole and right,
as soon as its last byte is in."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangefs.blocks.assembler import RunAssembler
from rangefs.blocks.flight import Pending
from rangefs.cache import PieceKey


@given(lengths=st.lists(st.integers(1, 5000), min_size=1, max_size=8), cuts=st.lists(st.integers(0, 40_000)))
def test_pieces_come_out_whole_and_as_soon_as_they_are_in(lengths: list[int], cuts: list[int]) -> None:
    starts = [sum(lengths[:n]) for n in range(len(lengths))]
    run = [(PieceKey("o", start, length), Pending(None)) for start, length in zip(starts, lengths, strict=True)]
    data = bytes(n % 251 for n in range(sum(lengths)))
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    assembler = RunAssembler(run)
    out: list[tuple[int, bytes]] = []
    for lo, hi in itertools.pairwise(bounds):
        for entry, piece in assembler.feed(data[lo:hi]):
            assert entry[0].stop <= hi, "not before its bytes are in"
            out.append((entry[0].start, bytes(piece)))
        assert all(key.stop > hi for key, _ in assembler.missing()), "and as soon as they are"
    assert assembler.done
    assert out == [(start, data[start : start + length]) for start, length in zip(starts, lengths, strict=True)]
    with pytest.raises(ValueError):
        assembler.feed(b"x")

"""MemoryTier against a model: the bytes it serves, its byte count and limit, and which pieces leave first
(those a read reached the end of, oldest passed first; then the least recently used of the rest)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rangefs.blocks.memory import MemoryTier
from rangefs.cache import PieceKey
from tests.origin import pattern_bytes

LIMIT = 10_000
KEYS = [
    PieceKey(object_id, start, 1_000 + 700 * (start // 4096))
    for object_id in "ab"
    for start in range(0, 5 * 4096, 4096)
]


@dataclass
class Held:
    data: bytes
    passed: bool
    order: int  # when it was last used (not passed) or passed (passed)


class MemoryTierModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tier = MemoryTier(LIMIT)
        self.held: dict[PieceKey, Held] = {}
        self.clock = 0

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    @rule(key=st.sampled_from(KEYS), seed=st.integers(0, 3))
    def put(self, key: PieceKey, seed: int) -> None:
        data = pattern_bytes(key.length, seed=seed)
        self.tier.put(key, memoryview(data))
        self.held[key] = Held(data, False, self._tick())
        while sum(len(h.data) for h in self.held.values()) > LIMIT and len(self.held) > 1:
            passed = [k for k, h in self.held.items() if h.passed]
            candidates = passed or list(self.held)
            del self.held[min(candidates, key=lambda k: self.held[k].order)]

    @rule(key=st.sampled_from(KEYS), start=st.floats(0, 1), share=st.floats(0, 1))
    def read(self, key: PieceKey, start: float, share: float) -> None:
        offset = int(start * (key.length - 1))
        length = 1 + int(share * (key.length - offset - 1))
        got = self.tier.read(key, offset, length)
        held = self.held.get(key)
        if held is None:
            assert got is None
            return
        assert got == held.data[offset : offset + length]
        if offset + length == key.length:
            held.passed, held.order = True, self._tick()
        elif not held.passed:
            held.order = self._tick()

    @rule(object_id=st.sampled_from("ab"))
    def drop_object(self, object_id: str) -> None:
        dropped = [key for key in self.held if key.object_id == object_id]
        assert self.tier.drop_object(object_id) == len(dropped)
        for key in dropped:
            del self.held[key]

    @invariant()
    def holds_what_the_model_holds(self) -> None:
        assert all(self.tier.contains(key) == (key in self.held) for key in KEYS)
        assert self.tier.bytes == sum(len(held.data) for held in self.held.values())
        assert self.tier.bytes <= LIMIT or len(self.held) == 1


TestMemoryTier = MemoryTierModel.TestCase


def test_a_sequential_reader_keeps_what_is_ahead_of_it() -> None:
    """Pieces read through leave before pieces prefetched ahead of the reader, however recently they were read."""
    keys = [PieceKey("a", index * 1000, 1000) for index in range(12)]
    tier = MemoryTier(8000)
    for key in keys[:8]:
        tier.put(key, memoryview(bytes(1000)))
    for key in keys[:4]:  # the reader reads through the first four, the next four wait ahead of it
        assert tier.read(key, 0, 500) is not None
        assert tier.read(key, 500, 500) is not None
    for key in keys[8:12]:  # four more arrive
        tier.put(key, memoryview(bytes(1000)))
    assert [tier.contains(key) for key in keys] == [False] * 4 + [True] * 8

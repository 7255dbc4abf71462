"""The claim protocol (rangefs/cache/claims.py) against a model: simulated processes sharing one real cache dir.

Each simulated process is a BlockCache of its own (its own SQLite connection to the one index file) with a
made-up pid; the test decides which pids are alive and moves a shared clock. Hypothesis drives claims,
renewals, releases, piece writes, evictions, deaths and new mounts, and checks after every step:
- at most one live owner holds each piece (a claim answered OURS to two live owners would be a double fetch);
- every state a claim or a waiter's poll reports is the one the model expects: a dead owner's claim is taken
  over at once, a live but silent one's once its lease has run out, never before;
- a waiter is told ON_DISK only for a piece that is on disk, and reading it gives exactly its bytes.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rangefs.cache import BlockCache, Owner, PieceKey, PieceState

LEASE = 3.0
OBJECT = "ab" + "0" * 62
KEYS = [PieceKey(OBJECT, start, 4096) for start in range(0, 5 * 4096, 4096)]


def piece_bytes(key: PieceKey) -> bytes:
    return bytes([key.start // 4096 + 1]) * key.length


@dataclass
class Holding:
    """A claim the model believes ``pid`` holds under ``token`` (answered OURS), until ``expires``."""

    pid: int
    token: str
    expires: float


@dataclass
class Process:
    pid: int
    cache: BlockCache
    tokens: list[str] = field(default_factory=list)


class ClaimProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="rangefs-claims-"))
        self.now = 1000.0
        self.dead: set[int] = set()
        self.next_pid = 100
        self.next_token = 0
        self.processes: list[Process] = []
        self.on_disk: set[PieceKey] = set()
        self.held: dict[PieceKey, list[Holding]] = {key: [] for key in KEYS}
        for _ in range(3):
            self.processes.append(self._start_process())

    def teardown(self) -> None:
        for process in self.processes:
            process.cache.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # The model ----------------------------------------------------------------------------------------

    def _start_process(self) -> Process:
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        cache = BlockCache(self.root, clock=lambda: self.now, claim_owner=Owner(pid, 1, "model"), alive=self._alive)
        assert cache.open() is None
        return Process(pid, cache)

    def _alive(self, owner: Owner) -> bool:
        return owner.pid not in self.dead

    def _live(self, holding: Holding) -> bool:
        return holding.expires > self.now and holding.pid not in self.dead

    def _expected(self, key: PieceKey, token: str | None) -> PieceState:
        """What the index should say of ``key`` to a claim by ``token`` (None: a waiter's poll); another fetch of
        the same process is another claimant (two engines on one cache dir)."""
        if key in self.on_disk:
            return PieceState.ON_DISK
        if any(self._live(h) and h.token != token for h in self.held[key]):
            return PieceState.CLAIMED
        return PieceState.FREE

    def _alive_processes(self) -> list[Process]:
        return [process for process in self.processes if process.pid not in self.dead]

    # Rules --------------------------------------------------------------------------------------------

    @rule(data=st.data(), keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    def claim(self, data: st.DataObject, keys: list[PieceKey]) -> None:
        process = data.draw(st.sampled_from(self._alive_processes()))
        token = f"t{self.next_token}"
        self.next_token += 1
        expected = {key: self._expected(key, token) for key in keys}
        stale = [k for k in keys if expected[k] is PieceState.FREE and any(h.token != token for h in self.held[k])]
        taken_before = process.cache.statistics().claims_taken_over
        states = process.cache.claim(keys, token, LEASE)
        assert process.cache.statistics().claims_taken_over - taken_before == len(stale), "takeovers counted"
        assert states == {k: PieceState.OURS if s is PieceState.FREE else s for k, s in expected.items()}
        process.tokens.append(token)
        for key, state in states.items():
            if state is PieceState.OURS:
                # A claim replaces any earlier one of the piece (none of them was live).
                self.held[key] = [Holding(process.pid, token, self.now + LEASE)]

    @precondition(lambda self: any(p.tokens for p in self._alive_processes()))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        process = data.draw(st.sampled_from([p for p in self._alive_processes() if p.tokens]))
        token = data.draw(st.sampled_from(process.tokens))
        process.cache.renew_claims(token, LEASE)
        for holdings in self.held.values():
            for holding in holdings:
                if holding.token == token:
                    holding.expires = self.now + LEASE

    @precondition(lambda self: any(p.tokens for p in self._alive_processes()))
    @rule(data=st.data(), keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=5, unique=True))
    def release(self, data: st.DataObject, keys: list[PieceKey]) -> None:
        process = data.draw(st.sampled_from([p for p in self._alive_processes() if p.tokens]))
        token = data.draw(st.sampled_from(process.tokens))
        process.cache.release_claims(token, keys)
        for key in keys:
            self.held[key] = [h for h in self.held[key] if h.token != token]

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def write_piece(self, data: st.DataObject, key: PieceKey) -> None:
        """A process finished fetching a piece (its own claim, or a fetch regardless after a long wait)."""
        process = data.draw(st.sampled_from(self._alive_processes()))
        assert process.cache.write(key, memoryview(piece_bytes(key)), {"url": "model"})
        self.on_disk.add(key)
        self.held[key] = []  # recorded: its claim went in the same transaction

    @rule()
    def evict_everything(self) -> None:
        self.processes[0].cache.drop_object(OBJECT)
        self.on_disk.clear()

    @rule(seconds=st.sampled_from([0.5, LEASE / 2, LEASE, LEASE + 0.5]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: len(self._alive_processes()) > 1)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        """kill -9: the process's claims stay in the index, but no longer live."""
        process = data.draw(st.sampled_from(self._alive_processes()))
        self.dead.add(process.pid)

    @precondition(lambda self: len(self.processes) < 8)
    @rule()
    def new_mount(self) -> None:
        """A new process opens the cache dir: claims that are not live are cleared."""
        self.processes.append(self._start_process())
        for key in KEYS:
            self.held[key] = [h for h in self.held[key] if self._live(h)]

    @rule(data=st.data())
    def waiter_polls(self, data: st.DataObject) -> None:
        process = data.draw(st.sampled_from(self.processes))
        states = process.cache.piece_states(KEYS)
        for key, state in states.items():
            assert state is self._expected(key, None), key
            if state is PieceState.ON_DISK:
                assert process.cache.read(key, 0, key.length) == piece_bytes(key), "told on disk, but not there"

    # Invariants ---------------------------------------------------------------------------------------

    @invariant()
    def one_live_owner_per_piece(self) -> None:
        for key, holdings in self.held.items():
            assert len([h for h in holdings if self._live(h)]) <= 1, key

    @invariant()
    def index_holds_what_the_model_holds(self) -> None:
        with contextlib.closing(sqlite3.connect(self.root / "index.sqlite3")) as db:  # as an onlooker would
            rows = {(start, token) for start, token in db.execute("SELECT start, token FROM claims")}
        for key, holdings in self.held.items():
            for holding in holdings:
                assert (key.start, holding.token) in rows, f"{key} lost the claim of {holding.token}"


ClaimProtocol.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_claim_protocol = ClaimProtocol.TestCase

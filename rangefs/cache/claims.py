"""Claims: fetches in flight, visible to every process that shares a cache directory.

Two mounts (or a mount and ``rangefs get``) on one cache dir reading the same file at once used to fetch about
1.5x its size from the origin: each saw only its own fetches in flight. Before a process fetches pieces it
*claims* them in the shared index (``claims`` table, one row per piece, in the same SQLite file as the pieces
they become); another process that wants a claimed piece waits for it to appear in the ``pieces`` table
instead of fetching it again, and takes the claim over when it is no longer live.

Why rows in the index rather than a lock file per piece run: the index is already shared and transactional, so
"is it on disk, or is someone fetching it?" is one consistent read, and a piece's claim disappears in the same
transaction that records the piece (``CacheIndex.add_pieces``), so a waiter never sees neither. Lock files
(flock) would free themselves when their process dies, but two processes cut runs differently (other block
sizes, other readahead windows), so a lock per run is not a lock per piece, and waiting on one is blocking I/O
that trio would have to poll or put in a thread anyway. A row per piece costs one transaction per fetch run
(measured: 120 us to claim 8 pieces, 80 us to release them, 30 us a renewal; a run is 1-8 MiB, and a cold
256 MiB read makes 36 of them).

A claim is live while its owner lives and its lease runs:
- *owner*: pid, the process's start time (``/proc/PID/stat``: a reused pid is another process) and host. A
  claim of a dead process on this host (``kill -9``) is taken over at the waiter's next poll, not after the
  lease; one of another host (a cache dir on a network filesystem) only by its lease.
- *lease*: ``CLAIM_LEASE`` seconds, renewed by the owner as bytes arrive (``renew``), so a fetch that stalls
  (a hung connection, a stopped process) is taken over once its lease runs out. 3 s: a run of 8 MiB at
  40 ms RTT takes 0.2-0.5 s, and a renewal costs one ``UPDATE`` per run every ``CLAIM_LEASE / 4``.

A fetch taken over while its first owner still runs is fetched twice; both write the same bytes (the key names
the object version and byte range), so that costs bytes, never correctness.
"""

from __future__ import annotations

import enum
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from itertools import groupby

from rangefs.cache.key import PieceKey

# Seconds a claim stays live without a renewal (see the module docstring).
CLAIM_LEASE = 3.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    object_id TEXT NOT NULL, start INTEGER NOT NULL, length INTEGER NOT NULL, token TEXT NOT NULL,
    pid INTEGER NOT NULL, started INTEGER NOT NULL, host TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (object_id, start, length)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_by_token ON claims (token);
"""


class PieceState(enum.Enum):
    ON_DISK = "on disk"  # recorded in the index: read it from the cache
    CLAIMED = "claimed"  # another owner's live claim: wait
    FREE = "free"  # neither: whoever claims it first fetches it
    OURS = "ours"  # claimed by the caller just now: fetch it


@dataclass(frozen=True)
class Owner:
    """A process that claims pieces: ``started`` is its start time in clock ticks after boot (0: unknown)."""

    pid: int
    started: int
    host: str


@cache
def this_process(pid: int) -> Owner:
    """The Owner for process ``pid`` (pass ``os.getpid()``: a forked child is another owner)."""
    return Owner(pid, _start_time(pid) or 0, socket.gethostname())


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def owner_alive(owner: Owner) -> bool:
    """Whether a claim's owner still runs; an owner of another host is taken to (its lease decides)."""
    if owner.host != socket.gethostname():
        return True
    fields = _proc_stat(owner.pid)
    if fields is None:
        try:
            os.kill(owner.pid, 0)  # no /proc (or another pid namespace): ask the kernel
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return not owner.started or int(fields[19]) == owner.started


Liveness = Callable[[Owner], bool]


class ClaimTable:
    """The ``claims`` table of one index connection. Invariant (with the index): a key has at most one claim
    row, and none once its piece is recorded; a row is *live* iff its lease has not run out and its owner lives.
    The methods that change rows run inside the caller's transaction."""

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float], owner: Owner, alive: Liveness) -> None:
        self._db = db
        self._clock = clock
        self.owner = owner
        self._alive = alive
        self.taken_over = 0  # claims of dead or stalled owners this connection replaced with its own

    def _live(self, owner: Owner, expires: float, now: float, verdicts: dict[Owner, bool]) -> bool:
        """``verdicts``: owners already asked about in this call (one /proc read each)."""
        if expires <= now:
            return False
        if owner not in verdicts:
            verdicts[owner] = self._alive(owner)
        return verdicts[owner]

    def states(
        self, keys: Iterable[PieceKey], token: str | None = None, stale: set[PieceKey] | None = None
    ) -> dict[PieceKey, PieceState]:
        """What each piece is now: ON_DISK, CLAIMED by a live owner (other than ``token``), or FREE; the FREE ones
        with another owner's claim that is no longer live are added to ``stale``."""
        now = self._clock()
        verdicts: dict[Owner, bool] = {}
        states: dict[PieceKey, PieceState] = {}
        for object_id, group in groupby(sorted(keys), key=lambda key: key.object_id):
            wanted = list(group)
            span = (object_id, wanted[0].start, wanted[-1].start)
            between = "object_id=? AND start BETWEEN ? AND ?"
            on_disk = {(s, n) for s, n in self._db.execute(f"SELECT start, length FROM pieces WHERE {between}", span)}
            claims = {
                (s, n): (t, Owner(p, st, h), e)
                for s, n, t, p, st, h, e in self._db.execute(
                    f"SELECT start, length, token, pid, started, host, expires FROM claims WHERE {between}", span
                )
            }
            for key in wanted:
                claim = claims.get((key.start, key.length))
                if (key.start, key.length) in on_disk:
                    states[key] = PieceState.ON_DISK
                elif claim is not None and claim[0] != token and self._live(claim[1], claim[2], now, verdicts):
                    states[key] = PieceState.CLAIMED
                else:
                    states[key] = PieceState.FREE
                    if claim is not None and claim[0] != token and stale is not None:
                        stale.add(key)
        return states

    def claim(self, keys: Iterable[PieceKey], token: str, lease: float) -> dict[PieceKey, PieceState]:
        """Claim the FREE pieces for ``token`` (they become OURS, a dead or expired claim taken over); the others
        keep their state. In a transaction."""
        stale: set[PieceKey] = set()
        states = self.states(keys, token, stale)
        mine = [key for key, state in states.items() if state is PieceState.FREE]
        self.taken_over += len(stale)
        owner, expires = self.owner, self._clock() + lease
        self._db.executemany(
            "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(k.object_id, k.start, k.length, token, owner.pid, owner.started, owner.host, expires) for k in mine],
        )
        return states | dict.fromkeys(mine, PieceState.OURS)

    def renew(self, token: str, lease: float) -> None:
        self._db.execute("UPDATE claims SET expires=? WHERE token=?", (self._clock() + lease, token))

    def release(self, token: str, keys: Iterable[PieceKey]) -> None:
        """Drop ``token``'s claims of ``keys`` (fetched, written or given up); another owner's stay."""
        self._db.executemany(
            "DELETE FROM claims WHERE token=? AND object_id=? AND start=? AND length=?",
            [(token, key.object_id, key.start, key.length) for key in keys],
        )

    def settle(self, keys: Iterable[PieceKey]) -> None:
        """Drop every claim of pieces just recorded: they are on disk, nobody needs to fetch them."""
        self._db.executemany(
            "DELETE FROM claims WHERE object_id=? AND start=? AND length=?",
            [(key.object_id, key.start, key.length) for key in keys],
        )

    def clear_stale(self) -> int:
        """Drop claims that are not live (dead owners, run-out leases); returns how many."""
        now = self._clock()
        verdicts: dict[Owner, bool] = {}
        rows = self._db.execute("SELECT object_id, start, length, pid, started, host, expires FROM claims").fetchall()
        stale = [row[:3] for row in rows if not self._live(Owner(*row[3:6]), row[6], now, verdicts)]
        self._db.executemany("DELETE FROM claims WHERE object_id=? AND start=? AND length=?", stale)
        return len(stale)

"""CacheIndex: which pieces (blocks, chunks) are on disk, how much space they take and when each was last used.

A SQLite database in the cache directory, shared by every process that uses the directory (WAL mode;
every change is one short ``BEGIN IMMEDIATE`` transaction), so the size limit holds for the directory as a
whole even with two mounts on it. A single-row ``usage`` counter changes in the same transaction as the
block rows, so the total is never recomputed on the read or write path.

Writing a block file happens *before* its row is added and deleting a row *before* its file is unlinked:
after a crash the index can only lack files that exist (found and adopted by ``reconcile``) or list files
that are gone (dropped by it); it never hides bytes from the limit for longer than one startup.

Last-use times of cache hits are buffered in memory and written in batches (every ``_TOUCH_INTERVAL``
seconds), so a hit costs no database write. Besides blocks, the index keeps small opaque *records* (the
engine stores probe results there), a description of each object (its URL), for ``rangefs cache info``, and
the claims of pieces being fetched (claims.py), which a piece's row replaces in one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rangefs.cache.claims import SCHEMA as CLAIMS_SCHEMA
from rangefs.cache.claims import ClaimTable, Liveness, Owner, PieceState, owner_alive, this_process
from rangefs.cache.key import PieceKey

_T = TypeVar("_T")

# Seconds between batched writes of last-use times: LRU order is exact to within this.
_TOUCH_INTERVAL = 2.0
_KEY_MATCH = "object_id=? AND start=? AND length=?"
# Seconds a process waits for another one's transaction (they last microseconds; a stuck one is a bug).
_BUSY_TIMEOUT = 10.0

# Version 0.1 named blocks by index alone ("blocks" table): dropped, its files are removed with it (store.py).
_SCHEMA = """
DROP TABLE IF EXISTS blocks;
CREATE TABLE IF NOT EXISTS pieces (
    object_id TEXT NOT NULL, start INTEGER NOT NULL, length INTEGER NOT NULL, size INTEGER NOT NULL,
    last_used REAL NOT NULL, PRIMARY KEY (object_id, start, length)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pieces_by_last_use ON pieces (last_used);
CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO usage VALUES (0, 0);
CREATE TABLE IF NOT EXISTS objects (object_id TEXT PRIMARY KEY, description TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value TEXT NOT NULL, stored_at REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class ObjectUsage:
    object_id: str
    description: dict[str, object]
    blocks: int
    bytes: int


def _row(key: PieceKey) -> tuple[str, int, int]:
    return key.object_id, key.start, key.length


class CacheIndex:
    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        owner: Owner | None = None,
        alive: Liveness = owner_alive,
    ) -> None:
        self._clock = clock
        self._db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a crash of the process loses nothing; a power cut may lose the last transactions, which
        # reconcile() repairs from the files on disk.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA + CLAIMS_SCHEMA)
        self.claims = ClaimTable(self._db, clock, owner or this_process(os.getpid()), alive)
        self._touched: dict[PieceKey, float] = {}
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush_touches()
        self._db.close()

    def _transaction(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def usage(self) -> int:
        return int(self._db.execute("SELECT bytes FROM usage").fetchone()[0])

    def add_pieces(self, sizes: dict[PieceKey, int], limit: int | None) -> list[PieceKey]:
        """Record pieces written to disk (one transaction); returns the least recently used pieces to delete
        to stay within ``limit``."""
        db = self._transaction()
        try:
            now = self._clock()
            for key, size in sizes.items():
                old = db.execute(f"SELECT size FROM pieces WHERE {_KEY_MATCH}", _row(key)).fetchone()
                db.execute("INSERT OR REPLACE INTO pieces VALUES (?, ?, ?, ?, ?)", (*_row(key), size, now))
                db.execute("UPDATE usage SET bytes = bytes + ?", (size - (old[0] if old else 0),))
            self.claims.settle(sizes)
            evicted = self._evict(db, limit, keep=set(sizes)) if limit is not None else []
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return evicted

    def _evict(self, db: sqlite3.Connection, limit: int, keep: set[PieceKey]) -> list[PieceKey]:
        excess = int(db.execute("SELECT bytes FROM usage").fetchone()[0]) - limit
        evicted: list[PieceKey] = []
        if excess <= 0:
            return evicted
        self._flush_touches(db)  # evict by true recency, including hits not yet written
        freed = 0
        for object_id, start, length, size in db.execute(
            "SELECT object_id, start, length, size FROM pieces ORDER BY last_used"
        ).fetchall():
            if freed >= excess:
                break
            key = PieceKey(object_id, start, length)
            if key in keep:
                continue
            evicted.append(key)
            freed += size
        db.executemany(f"DELETE FROM pieces WHERE {_KEY_MATCH}", map(_row, evicted))
        db.execute("UPDATE usage SET bytes = bytes - ?", (freed,))
        return evicted

    def evict_to(self, limit: int) -> list[PieceKey]:
        """Drop least recently used pieces until at most ``limit`` bytes remain (``cache prune``)."""
        db = self._transaction()
        try:
            evicted = self._evict(db, limit, keep=set())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return evicted

    def _in_transaction(self, change: Callable[[], _T]) -> _T:
        db = self._transaction()
        try:
            result = change()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def claim_pieces(self, keys: list[PieceKey], token: str, lease: float) -> dict[PieceKey, PieceState]:
        """Claim for ``token`` the pieces nobody has nor fetches (claims.py); every key's state."""
        return self._in_transaction(lambda: self.claims.claim(keys, token, lease))

    def piece_states(self, keys: list[PieceKey]) -> dict[PieceKey, PieceState]:
        return self.claims.states(keys)

    def renew_claims(self, token: str, lease: float) -> None:
        self._in_transaction(lambda: self.claims.renew(token, lease))

    def release_claims(self, token: str, keys: list[PieceKey]) -> None:
        self._in_transaction(lambda: self.claims.release(token, keys))

    def clear_stale_claims(self) -> int:
        return self._in_transaction(self.claims.clear_stale)

    def remove_pieces(self, keys: Iterable[PieceKey]) -> None:
        """Forget pieces whose files were, or are about to be, deleted."""
        keys = list(keys)
        if not keys:
            return
        db = self._transaction()
        try:
            freed = 0
            for key in keys:
                row = db.execute(f"DELETE FROM pieces WHERE {_KEY_MATCH} RETURNING size", _row(key)).fetchone()
                freed += row[0] if row else 0
            db.execute("UPDATE usage SET bytes = bytes - ?", (freed,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def pieces_of(self, object_id: str) -> list[PieceKey]:
        rows = self._db.execute("SELECT start, length FROM pieces WHERE object_id=?", (object_id,)).fetchall()
        return [PieceKey(object_id, start, length) for start, length in rows]

    def touch(self, key: PieceKey) -> None:
        """Note a cache hit; written to the database in the next batch."""
        self._touched[key] = self._clock()
        if time.monotonic() - self._last_flush > _TOUCH_INTERVAL:
            self.flush_touches()

    def flush_touches(self) -> None:
        if not self._touched:
            self._last_flush = time.monotonic()
            return
        db = self._transaction()
        try:
            self._flush_touches(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _flush_touches(self, db: sqlite3.Connection) -> None:
        db.executemany(
            f"UPDATE pieces SET last_used=max(last_used, ?) WHERE {_KEY_MATCH}",
            [(when, *_row(key)) for key, when in self._touched.items()],
        )
        self._touched.clear()
        self._last_flush = time.monotonic()

    def reconcile(
        self, on_disk: dict[PieceKey, tuple[int, float]], limit: int | None, exists: Callable[[PieceKey], bool]
    ) -> list[PieceKey]:
        """Make the index match the piece files found on disk ((size, mtime) each); returns pieces to evict.

        Another process may share the directory and add or evict pieces between the scan and this
        transaction: a row missing from the scan is only dropped, and a file only adopted, once ``exists``
        confirms it (under the write lock, so the other process cannot change it in between)."""
        db = self._transaction()
        try:
            indexed = {
                PieceKey(o, start, length): size
                for o, start, length, size in db.execute("SELECT object_id, start, length, size FROM pieces")
            }
            gone = [key for key in indexed if key not in on_disk and not exists(key)]
            db.executemany(f"DELETE FROM pieces WHERE {_KEY_MATCH}", map(_row, gone))
            db.executemany(
                "INSERT OR IGNORE INTO pieces VALUES (?, ?, ?, ?, ?)",
                [
                    (*_row(key), size, mtime)
                    for key, (size, mtime) in on_disk.items()
                    if key not in indexed and exists(key)
                ],
            )
            db.execute("UPDATE usage SET bytes = (SELECT coalesce(sum(size), 0) FROM pieces)")
            db.execute("DELETE FROM objects WHERE object_id NOT IN (SELECT DISTINCT object_id FROM pieces)")
            evicted = self._evict(db, limit, keep=set()) if limit is not None else []
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return evicted

    def describe(self, object_id: str, description: dict[str, object]) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO objects VALUES (?, ?)", (object_id, json.dumps(description, sort_keys=True))
        )

    def forget_object(self, object_id: str) -> None:
        self._db.execute("DELETE FROM objects WHERE object_id=?", (object_id,))

    def objects(self) -> list[ObjectUsage]:
        rows = self._db.execute(
            "SELECT b.object_id, o.description, count(*), sum(b.size) FROM pieces b"
            " LEFT JOIN objects o ON o.object_id = b.object_id GROUP BY b.object_id ORDER BY 4 DESC"
        ).fetchall()
        return [ObjectUsage(row[0], json.loads(row[1] or "{}"), row[2], row[3]) for row in rows]

    def put_records(self, records: dict[str, str]) -> None:
        """Many records in one transaction: a commit each cost ~0.1 ms, 10 % of a listing's CPU."""
        db = self._transaction()
        try:
            now = self._clock()
            db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", [(k, v, now) for k, v in records.items()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def get_records(self, keys: list[str]) -> dict[str, tuple[str, float]]:
        """Stored (value, stored_at) for the keys that have a record."""
        found: dict[str, tuple[str, float]] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value, stored_at in self._db.execute(
                f"SELECT key, value, stored_at FROM records WHERE key IN ({marks})", chunk
            ):
                found[key] = (value, stored_at)
        return found

    def set_setting(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (name, value))

    def setting(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

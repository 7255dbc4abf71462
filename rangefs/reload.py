"""Reloading the urls file of a live mount (SIGHUP, ``rangefs reload``) without unmounting.

An entry whose definition (path, URL, headers, size, commands) is unchanged keeps its file, inode and open
handles. A new entry is a new file; a removed one leaves the tree at once, but its open handles read on until
closed; a changed one is both, so its new version gets a new inode and can never be served the old pages
(the cache is safe anyway: a new URL is a new object id). The tree and the engine change together, with no
await in between, so a request sees the old tree or the new one; then the kernel is told which directory
entries to forget, and the new files are probed in the background.

A urls file with any problem changes nothing: every ``FILE:LINE`` problem is logged and kept in the status.

How ``rangefs reload`` gets its answer: the status of the last reload (with the daemon's pid) is the
read-only xattr ``user.rangefs.reload`` of the mount root. The command reads the pid there, sends SIGHUP,
and waits until the status shows a reload that started after its signal. A getxattr that triggered the
reload itself would run it twice (callers ask for the size first, and Python retries with a larger buffer)
and on every `getfattr -d`; a unix socket would need a runtime directory, a name derived from the
mountpoint and clean-up after a crash. This way SIGHUP stays the one trigger, and the answer needs nothing
but the mount itself. Signals that arrive during a reload are folded into one more reload, which reads the
file after all of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import trio

from rangefs.config import Entry, read_urls_file
from rangefs.engine import FileEngine
from rangefs.errors import ConfigError
from rangefs.fuse_ops import RangefsOperations

log = logging.getLogger(__name__)


class Reloader:
    """Rereads ``urls_file`` on request and brings the mount's tree and engine in line with it.

    ``status`` is what ``rangefs reload`` reads: pid, generation (reloads done), started_at (time.time() when
    the last reload began), ok, problems and counts. ``_requests`` holds at most one pending reload."""

    def __init__(
        self, urls_file: Path, operations: RangefsOperations, environ: Mapping[str, str] | None = None
    ) -> None:
        self.urls_file = urls_file
        self.operations = operations
        self.environ = os.environ if environ is None else environ
        self._send, self._receive = trio.open_memory_channel[None](1)
        self.status: dict[str, object] = {"pid": os.getpid(), "generation": 0, "started_at": 0.0, "ok": True}
        operations.reload_status = self.status

    def __repr__(self) -> str:
        return f"<Reloader {self.urls_file} {self.status}>"

    @property
    def engine(self) -> FileEngine:
        return self.operations.engine

    def request(self) -> None:
        """Ask for a reload; one already pending will read the file after this request anyway."""
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(None)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out requested reloads, one at a time, until cancelled."""
        async with trio.open_nursery() as probes:
            task_status.started()
            async for _ in self._receive:
                await self.reload(probes=probes)

    async def reload(self, *, probes: trio.Nursery) -> None:
        """One reload; its failures are contained (the mount stays up) and reported in ``status``. The new
        files are probed in ``probes``, after the reload reports (`ls -l` waits only for what it lists)."""
        started_at = time.time()
        try:
            counts = await self._reload(probes)
        except ConfigError as error:
            for problem in error.problems:
                log.warning("reload: %s", problem)
            log.warning("reload of %s failed: the mount keeps its files", self.urls_file)
            self._publish(started_at, ok=False, problems=error.problems)
        except Exception as error:  # a bug must not end the mount
            log.exception("reload of %s failed", self.urls_file)
            self._publish(started_at, ok=False, problems=[f"unexpected error: {error!r}"])
        else:
            log.info("reloaded %s: %s", self.urls_file, ", ".join(f"{n} {what}" for what, n in counts.items()))
            self._publish(started_at, ok=True, problems=[], **counts)

    async def _reload(self, probes: trio.Nursery) -> dict[str, int]:
        entries = await trio.to_thread.run_sync(read_urls_file, self.urls_file, self.environ)
        # From here to tree_changed, no await: every request sees either the old tree or the new one.
        namespace, engine = self.operations.namespace, self.engine
        current = {node.entry.path: node for node in namespace.files()}
        files: list[tuple[Entry, int]] = []
        added: list[int] = []
        for entry in entries:
            node = current.get(entry.path)
            if node is not None and node.entry.definition() == entry.definition():
                files.append((node.entry, node.file_index))
            else:
                index = engine.add_entry(entry)
                files.append((entry, index))
                added.append(index)
        change = namespace.update(files)
        for node in change.removed:
            engine.retire(node.file_index)
        paths = {entry.path for entry in entries}
        changed = sum(node.entry.path in paths for node in change.removed)
        await self.operations.tree_changed(change)
        probes.start_soon(engine.run_probes, added)
        return {"added": len(added) - changed, "removed": len(change.removed) - changed, "changed": changed}

    def _publish(self, started_at: float, *, ok: bool, problems: list[str], **counts: int) -> None:
        generation = self.status["generation"]
        assert isinstance(generation, int)
        self.status.clear()
        self.status.update(pid=os.getpid(), generation=generation + 1, started_at=started_at, ok=ok)
        self.status.update(problems=problems, finished_at=time.time(), **counts)

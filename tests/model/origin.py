"""An in-process, versioned HTTP origin for the model test: an ``httpx.AsyncBaseTransport``.

Each file has a *history* of states. A state is one content version (bytes from content.py) served with one
set of validators (strong ETag, weak ETag only, Last-Modified only, both, or none); a new state starts when
the content or the validators change, at the current logical time ``step`` (the machine's rule counter), so
the model knows exactly which versions existed when.

The origin speaks correct HTTP unless told otherwise (RFC 9110): HEAD; ``Range: bytes=a-b``, ``a-`` and
``-n``; an ``If-Range`` that does not match (strong comparison for entity tags, exact match for dates) means
200 with the whole current file; an unsatisfiable range is 416 with ``Content-Range: bytes */N``.

Per-file behaviours, switchable at any time (``Behaviour``): ignore If-Range (206 from the current version
whatever If-Range says, as some proxies do), ignore Range (200 with the whole file, advertising
``Accept-Ranges: none`` or silently), slow bodies (a sleep per 64 KiB), and a redirect to an alias path that
serves the same file (and answers 404 once the redirect is switched off, like an expired signed URL).

Fault bursts (``arm``) apply to the next N matching requests: 503 or 429 with ``Retry-After: 0``, a
connection that fails before any answer, a reset part-way through the body (``httpx.ReadError``), a body
that ends early. Every request is recorded with the state it was answered from.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate

import httpx
import trio

from tests.model.content import Shape, materialize

HOST = "origin.test"
VALIDATOR_MODES = ("strong", "both", "weak", "last-modified", "none")
FAULT_KINDS = ("503", "429", "refuse", "reset", "short")
_BODY_FAULTS = frozenset({"reset", "short"})  # only requests that get a body count for these
_CHUNK = 64 * 1024
_SLOW_CHUNK_DELAY = 0.001
_RANGE = re.compile(r"^\s*bytes=(\d*)-(\d*)\s*$")


@dataclass(frozen=True)
class Version:
    """One content version of a file."""

    name: str
    number: int
    size: int
    shape: Shape = None

    @property
    def content(self) -> bytes:
        return materialize(self.name, self.number, self.size, self.shape)


@dataclass
class FileState:
    """What the origin serves for a file from step ``since`` until step ``until`` (None: still)."""

    serial: int
    version: Version
    validators: str
    since: int
    until: int | None = None

    @property
    def etag(self) -> str | None:
        tag = f'"{self.version.name}-{self.serial}"'
        return {"strong": tag, "both": tag, "weak": f"W/{tag}"}.get(self.validators)

    @property
    def last_modified(self) -> str | None:
        if self.validators not in ("last-modified", "both"):
            return None
        return formatdate(1_700_000_000 + 7 * self.serial, usegmt=True)

    def alive_within(self, start: int, stop: int) -> bool:
        return self.since <= stop and (self.until is None or self.until >= start)

    def __str__(self) -> str:
        until = "now" if self.until is None else self.until
        return f"v{self.version.number} ({self.version.size} bytes, {self.validators}) steps {self.since}-{until}"


@dataclass
class Behaviour:
    ignores_if_range: bool = False
    ignores_range: str | None = None  # None, "advertised" (Accept-Ranges: none) or "silent"
    slow: bool = False
    redirect: bool = False


@dataclass
class FaultBurst:
    kind: str
    remaining: int
    armed_at: int
    exhausted_at: int | None = None
    exhausted_clock: float | None = None  # time.monotonic() then

    def active_within(self, start: int, stop: int) -> bool:
        return self.armed_at <= stop and (self.exhausted_at is None or self.exhausted_at >= start)

    def exhaust(self, step: int) -> None:
        self.remaining, self.exhausted_at, self.exhausted_clock = 0, step, time.monotonic()

    def ended_within(self, seconds: float) -> bool:
        """Over, less than ``seconds`` ago."""
        return self.exhausted_clock is not None and time.monotonic() - self.exhausted_clock < seconds


@dataclass
class RequestRecord:
    step: int
    method: str
    path: str
    name: str | None
    headers: dict[str, str]
    status: int = 0
    serial: int | None = None  # the state answered from
    body: tuple[int, int] | None = None  # file bytes the body carries
    fault: str | None = None
    completed: bool = False


@dataclass
class OriginFile:
    name: str
    history: list[FileState] = field(default_factory=list)
    behaviour: Behaviour = field(default_factory=Behaviour)
    faults: list[FaultBurst] = field(default_factory=list)

    @property
    def current(self) -> FileState:
        return self.history[-1]

    def versions(self) -> dict[int, Version]:
        return {state.version.number: state.version for state in self.history}


class ModelOrigin(httpx.AsyncBaseTransport):
    """Serves ``http://origin.test/files/NAME`` (and ``/alias/NAME`` while redirecting)."""

    def __init__(self) -> None:
        self.step = 0
        self.files: dict[str, OriginFile] = {}
        self.requests: list[RequestRecord] = []
        self._serials = 0
        self._requested = trio.Event()  # set by each GET that reaches a file

    def url(self, name: str) -> str:
        return f"http://{HOST}/files/{name}"

    # -- changes, made by the machine between (or during) operations ------------------------------------

    def put(self, name: str, size: int, validators: str, shape: Shape = None, *, new_content: bool = True) -> FileState:
        """Start a new state of ``name``: new content (or the same content with new validators)."""
        file = self.files.setdefault(name, OriginFile(name))
        if file.history:
            previous = file.current
            previous.until = self.step
            version = Version(name, previous.version.number + 1, size, shape) if new_content else previous.version
        else:
            version = Version(name, 1, size, shape)
        self._serials += 1
        state = FileState(self._serials, version, validators, self.step)
        assert len(version.content) == size  # built now: a bad shape fails here, not inside a request
        file.history.append(state)
        return state

    def arm(self, name: str, kind: str, count: int) -> FaultBurst:
        burst = FaultBurst(kind, count, self.step)
        self.files[name].faults.append(burst)
        return burst

    def disarm_all(self) -> None:
        for file in self.files.values():
            for burst in file.faults:
                if burst.exhausted_at is None:
                    burst.exhaust(self.step)

    def active_faults(self, name: str) -> list[FaultBurst]:
        return [burst for burst in self.files[name].faults if burst.exhausted_at is None]

    async def wait_for_get(self) -> None:
        await self._requested.wait()
        self._requested = trio.Event()

    # -- HTTP ---------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        pass  # shared by every client of the test case

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await trio.lowlevel.checkpoint()  # the network is never instantaneous
        path = request.url.path
        headers = {key.lower(): value for key, value in request.headers.items()}
        record = RequestRecord(self.step, request.method, path, None, headers)
        self.requests.append(record)
        kind, _, name = path.lstrip("/").partition("/")
        file = self.files.get(name) if kind in ("files", "alias") else None
        if file is None or (kind == "alias" and not file.behaviour.redirect):
            return self._simple(request, record, 404)
        record.name = name
        if kind == "files" and file.behaviour.redirect:
            return self._simple(request, record, 302, {"Location": f"/alias/{name}"})
        burst = self._take_fault(file, request.method)
        if burst is not None and burst.kind in ("503", "429"):
            record.fault = burst.kind
            return self._simple(request, record, int(burst.kind), {"Retry-After": "0"})
        if burst is not None and burst.kind == "refuse":
            record.fault = burst.kind
            raise httpx.ConnectError("connection refused (injected)", request=request)
        return self._answer(request, record, file, burst)

    def _take_fault(self, file: OriginFile, method: str) -> FaultBurst | None:
        for burst in file.faults:
            if burst.remaining <= 0 or (burst.kind in _BODY_FAULTS and method != "GET"):
                continue
            burst.remaining -= 1
            if burst.remaining == 0:
                burst.exhaust(self.step)
            return burst
        return None

    def _simple(
        self, request: httpx.Request, record: RequestRecord, status: int, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        record.status, record.completed = status, True
        return httpx.Response(status, headers={**(headers or {}), "Content-Length": "0"}, request=request)

    def _answer(
        self, request: httpx.Request, record: RequestRecord, file: OriginFile, burst: FaultBurst | None
    ) -> httpx.Response:
        state, behaviour = file.current, file.behaviour
        size = state.version.size
        record.serial = state.serial
        headers = {"Content-Type": "application/octet-stream"}
        if state.etag:
            headers["ETag"] = state.etag
        if state.last_modified:
            headers["Last-Modified"] = state.last_modified
        if behaviour.ignores_range is None:
            headers["Accept-Ranges"] = "bytes"
        elif behaviour.ignores_range == "advertised":
            headers["Accept-Ranges"] = "none"
        start, stop, status = 0, size, 200
        wanted = request.headers.get("range")
        if behaviour.ignores_range is not None:
            wanted = None
        if_range = request.headers.get("if-range")
        if (
            wanted is not None
            and if_range is not None
            and not behaviour.ignores_if_range
            and not _if_range_matches(if_range, state)
        ):
            wanted = None  # RFC 9110 13.1.5: the whole current representation instead
        if wanted is not None:
            parsed = _parse_range(wanted, size)
            if parsed == "unsatisfiable":
                return self._simple(request, record, 416, {"Content-Range": f"bytes */{size}"})
            if parsed is not None:
                start, stop, status = parsed[0], parsed[1], 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        headers["Content-Length"] = str(stop - start)
        record.status = status
        if request.method == "HEAD":
            record.completed = True
            return httpx.Response(status, headers=headers, request=request)
        record.body = (start, stop)
        self._requested.set()
        if burst is not None:
            record.fault = burst.kind
        fault = burst.kind if burst else None
        body = _Body(state.version.content, (start, stop), record, slow=behaviour.slow, fault=fault)
        return httpx.Response(status, headers=headers, stream=body, request=request)


class _Body(httpx.AsyncByteStream):
    def __init__(self, content: bytes, span: tuple[int, int], record: RequestRecord, *, slow: bool, fault: str | None):
        start, stop = span
        self._view = memoryview(content)[start:stop]
        self._record = record
        self._slow = slow
        length = stop - start
        self._cut = {"reset": length // 2, "short": length // 3}.get(fault or "", length)
        self._reset = fault == "reset"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self._cut:
            if self._slow:
                await trio.sleep(_SLOW_CHUNK_DELAY)
            else:
                await trio.lowlevel.checkpoint()
            piece = bytes(self._view[sent : min(sent + _CHUNK, self._cut)])
            sent += len(piece)
            yield piece
        if self._reset:
            raise httpx.ReadError("connection reset by peer (injected)")
        self._record.completed = True


def _if_range_matches(value: str, state: FileState) -> bool:
    value = value.strip()
    if value.startswith("W/"):
        return False  # a weak tag never matches (RFC 9110 13.1.5: strong comparison)
    if value.startswith('"'):
        return state.etag is not None and not state.etag.startswith("W/") and value == state.etag
    return state.last_modified is not None and value == state.last_modified


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """(start, stop), "unsatisfiable", or None for a header to ignore (multiple or malformed ranges)."""
    match = _RANGE.match(value)
    if not match or (match.group(1) == "" and match.group(2) == ""):
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    stop = size if last == "" else min(int(last) + 1, size)
    return start, stop

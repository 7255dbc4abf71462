"""A hypothesis state machine drives rangefs engines against a versioned origin and checks every byte.

Design: each test case gets one trio loop in a thread of its own (tests/model/harness.py), in which one or
two engines live for the whole case, so prefetches, cache writes and probes go on between rules. Each rule
runs its work in that loop with ``TrioLoop.call`` and waits for it; every engine operation has a deadline
(``DEADLINE``) and the loop itself a watchdog, so a hang is reported, never waited out. The model
(tests/model/model.py) says which answers are right; the origin (tests/model/origin.py) records which
versions existed at which step (a rule is one step).

Drawn once per case: one engine, or two sharing one cache dir (with the same or different block sizes);
block sizes 4 KiB to 4 MiB; a cache limit of a few blocks or none; readahead and format-aware prefetch on or
off; metadata TTL 0 or an hour; one to three files of 0 to a few blocks. Then rules open, read (several
reads at once on several handles, at block edges, at and past the end of file), read sequentially (to
trigger readahead), close; change files (same or new size, new or same content, any validators; also in the
middle of reads); switch a file's behaviour (ignore If-Range, ignore Range, slow, redirect); arm fault
bursts (503/429, refused connections, resets mid-body, short bodies) and cache faults; restart an engine
cleanly or crash it (optionally truncating or corrupting one block file, as a torn write would); re-read
what the cache holds (it must not be fetched again); and wait for the engines to settle.

Invariants, besides the model's checks of each answer: nothing escapes an engine's service nursery, and
nothing is logged at ERROR.

Avoiding a known bug so that others can be found: ``RANGEFS_MODEL_AVOID`` is a comma-separated list of
``behaviours`` below; each stops the machine from making the situation that triggers it. Empty by default:
the machine finds everything it can.

    weak-etag       no "weak" (weak-ETag-only) validators
    if-range        origins never ignore If-Range
    block-sizes     two engines always share one block size
    ignore-range    origins never ignore Range
    cache-faults    no injected cache faults
    mp4             no MP4-shaped files
    revalidate      no fault bursts of 8 or more requests (enough to fail a revalidation)
    redirect        origins never redirect
    format-refetch  re-reads of cached bytes skip files that a format-aware first open plans for
    cache-warnings  a cache write failure or a corrupt block is not reported by itself
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import trio
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rangefs.config import Entry
from rangefs.errors import RangefsError
from tests.model import model_settings
from tests.model.harness import EngineBundle, TrioLoop, build_engine, is_injected, settle
from tests.model.model import HandleRecord, Model, ModelViolation
from tests.model.origin import FAULT_KINDS, VALIDATOR_MODES, ModelOrigin
from tests.model.strategies import Case, FileSpec, Offset, Size, cases, file_sizes, offsets, shapes, sizes

AVOID = frozenset(filter(None, os.environ.get("RANGEFS_MODEL_AVOID", "").split(",")))
# Seconds any one engine operation may take: the origin answers in microseconds and the clients give up
# after 3 s, so anything slower is stuck.
DEADLINE = float(os.environ.get("RANGEFS_MODEL_DEADLINE", "10"))
WATCHDOG = DEADLINE + 20
MAX_HANDLES = 8
# Reads larger than this fetch whole blocks (smaller random reads may fetch 64 KiB chunks), so a re-read of
# the same range on a fresh handle must be served entirely from the cache.
_WHOLE_BLOCK_READ = 64 * 1024


@dataclass
class Outcome:
    value: Any = None
    error: RangefsError | None = None
    unexpected: BaseException | None = None
    hang: bool = False
    steps: tuple[int, int] = (0, 0)


@dataclass
class Slot:
    bundle: EngineBundle
    generation: int = 0


@dataclass
class Remembered:
    """A read whose whole blocks are in the cache dir (unbounded cache, nothing crashed since)."""

    name: str
    serial: int
    offset: int
    size: int
    step: int


class _LogCatcher(logging.Handler):
    """Every record at WARNING or above, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.records_lock:
            self.records.append(record)


class RangefsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop: TrioLoop | None = None
        self.slots: list[Slot] = []
        self.graveyard: list[EngineBundle] = []
        self.handles: list[HandleRecord] = []
        self.remembered: list[Remembered] = []
        self.cache_trusted = True
        self.damaged = False  # a block file was truncated or corrupted on purpose
        self.log = _LogCatcher()
        self._log_seen = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- set-up and tear-down -------------------------------------------------------------------------------

    @initialize(case=cases())
    def start(self, case: Case) -> None:
        if "block-sizes" in AVOID:
            same = tuple(dataclasses.replace(e, block_size=case.block_sizes[0]) for e in case.engines)
            case = dataclasses.replace(case, engines=same)
        self.case = case
        self._tmp = tempfile.TemporaryDirectory(prefix="rangefs-model-")
        self.cache_dir = Path(self._tmp.name) / "cache"
        self.origin = ModelOrigin()
        self.model = Model(self.origin, metadata_ttl=case.metadata_ttl)
        self.names = [spec.name for spec in case.files]
        for spec in case.files:
            self.origin.put(spec.name, spec.size, self._validators(spec.validators), self._shape(spec))
        self.entries = [Entry(PurePosixPath(name), self.origin.url(name), i + 1) for i, name in enumerate(self.names)]
        rangefs_log = logging.getLogger("rangefs")
        rangefs_log.addHandler(self.log)
        self._propagate, rangefs_log.propagate = rangefs_log.propagate, False  # the catcher reports them
        self.loop = TrioLoop()
        for settings in case.engines:
            self.slots.append(Slot(self._run(lambda s=settings: self._build(s))))

    def teardown(self) -> None:
        rangefs_log = logging.getLogger("rangefs")
        rangefs_log.removeHandler(self.log)
        rangefs_log.propagate = self._propagate
        try:
            if self.loop is not None and not self.loop.frozen:
                self._run(self._close_everything)
        finally:
            if self.loop is not None:
                self.loop.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    async def _close_everything(self) -> None:
        with trio.move_on_after(DEADLINE):
            for slot in self.slots:
                await slot.bundle.aclose()
        for bundle in self.graveyard:
            bundle.block_cache.close()  # the kernel closes a dead process' files

    async def _build(self, settings: Any) -> EngineBundle:
        assert self.loop is not None
        return await build_engine(
            self.loop.nursery, entries=self.entries, cache_dir=self.cache_dir, transport=self.origin, settings=settings
        )

    def _run(self, function: Callable[[], Awaitable[Any]]) -> Any:
        assert self.loop is not None
        return self.loop.call(function, watchdog=WATCHDOG)

    def _begin(self) -> int:
        self.origin.step += 1
        for slot_index, slot in enumerate(self.slots):
            spans = self.model.cache_faults.get(slot_index, [])
            if spans and spans[-1][1] is None and slot.bundle.cache.remaining <= 0:
                spans[-1] = (spans[-1][0], self.origin.step)
        return self.origin.step

    # -- helpers ----------------------------------------------------------------------------------------------

    def _validators(self, mode: str) -> str:
        return "strong" if mode == "weak" and "weak-etag" in AVOID else mode

    def _shape(self, spec: FileSpec) -> Any:
        return None if spec.name.endswith(".mp4") and "mp4" in AVOID else spec.shape

    def _slot(self, engine: int) -> tuple[int, Slot]:
        index = engine % len(self.slots)
        return index, self.slots[index]

    def _handle(self, pick: int) -> HandleRecord:
        return self.handles[pick % len(self.handles)]

    def _block_size(self, record: HandleRecord) -> int:
        return self.slots[record.engine].bundle.settings.block_size

    async def _attempt(self, operation: Callable[[], Awaitable[Any]]) -> Outcome:
        start = self.origin.step
        try:
            with trio.fail_after(DEADLINE):
                value = await operation()
        except trio.TooSlowError:
            return Outcome(hang=True, steps=(start, self.origin.step))
        except RangefsError as error:
            return Outcome(error=error, steps=(start, self.origin.step))
        except Exception as error:
            return Outcome(unexpected=error, steps=(start, self.origin.step))
        return Outcome(value=value, steps=(start, self.origin.step))

    def _describe_file(self, name: str) -> str:
        file = self.origin.files[name]
        history = "\n".join(f"    {state}" for state in file.history)
        faults = ", ".join(f"{b.kind} x{b.remaining} armed {b.armed_at} over {b.exhausted_at}" for b in file.faults)
        return f"  {name}: {file.behaviour}\n  faults: {faults or 'none'}\n  history:\n{history}"

    def _fail_outcome(self, what: str, name: str, outcome: Outcome, window_start: int, engine: int) -> None:
        """Raise unless a failed outcome is one the model allows."""
        if outcome.hang:
            raise ModelViolation(f"HANG: {what} did not finish within {DEADLINE:.0f} s\n{self._describe_file(name)}")
        if outcome.unexpected is not None and not (
            is_injected(outcome.unexpected) and self.model.cache_fault_within(engine, *outcome.steps)
        ):
            trace = "".join(traceback.format_exception(outcome.unexpected))
            raise ModelViolation(f"NOT A RANGEFS ERROR: {what} raised\n{trace}\n{self._describe_file(name)}")
        if outcome.error is not None and self.model.explain_error(name, engine, window_start, *outcome.steps) is None:
            raise ModelViolation(
                f"UNEXPLAINED ERROR: {what} failed at steps {outcome.steps[0]}-{outcome.steps[1]} with"
                f" {type(outcome.error).__name__}: {outcome.error}\n  no fault or cache fault was active and the"
                f" file did not change since step {window_start}\n{self._describe_file(name)}"
            )

    # -- opening and closing ----------------------------------------------------------------------------------

    async def _open(self, slot_index: int, name: str) -> tuple[Outcome, HandleRecord | None]:
        slot = self.slots[slot_index]
        start = self.origin.step
        serial = self.origin.files[name].current.serial
        outcome = await self._attempt(lambda: slot.bundle.engine.open(self.names.index(name)))
        if outcome.value is None:
            return outcome, None
        steps = (start, self.origin.step)
        record = self.model.opened(slot_index, slot.generation, name, outcome.value, steps=steps)
        record.serial = serial
        return outcome, record

    def _opened(self, slot_index: int, name: str, outcome: Outcome, record: HandleRecord | None) -> None:
        if record is None:
            window_start = 0 if self.case.metadata_ttl > 0 else outcome.steps[0]
            self._fail_outcome(f"open({name}) on engine {slot_index}", name, outcome, window_start, slot_index)
            return
        self.handles.append(record)
        while len(self.handles) > MAX_HANDLES:
            oldest = self.handles.pop(0)
            self._release(oldest)

    def _release(self, record: HandleRecord) -> None:
        engine = self.slots[record.engine].bundle.engine
        self._run(lambda: _sync(engine.release, record.handle))

    @rule(engine=st.integers(0, 1), file=st.integers(0, 2))
    def open(self, engine: int, file: int) -> None:
        self._begin()
        slot_index, _ = self._slot(engine)
        name = self.names[file % len(self.names)]
        outcome, record = self._run(lambda: self._open(slot_index, name))
        self._opened(slot_index, name, outcome, record)

    @rule(pick=st.integers(0, MAX_HANDLES - 1))
    def close(self, pick: int) -> None:
        self._begin()
        if not self.handles:
            return
        record = self._handle(pick)
        self.handles.remove(record)
        self._release(record)

    # -- reading ----------------------------------------------------------------------------------------------

    async def _read(self, record: HandleRecord, offset: int, size: int) -> tuple[HandleRecord, int, int, Outcome]:
        engine = self.slots[record.engine].bundle.engine
        outcome = await self._attempt(lambda: engine.read(record.handle, offset, size))
        return record, offset, size, outcome

    def _check(self, results: list[tuple[HandleRecord, int, int, Outcome]]) -> None:
        for record, offset, size, outcome in results:
            what = f"read({offset}, {size}) through {record.label()}"
            if outcome.value is None:
                self._fail_outcome(what, record.name, outcome, record.window[0], record.engine)
                continue
            self.model.check_read(record, offset, size, outcome.value, steps=outcome.steps)
            self._remember(record, offset, size, outcome)

    async def _gather(self, reads: list[tuple[HandleRecord, int, int]]) -> list[Any]:
        results: list[Any] = [None] * len(reads)

        async def one(position: int, record: HandleRecord, offset: int, size: int) -> None:
            results[position] = await self._read(record, offset, size)

        async with trio.open_nursery() as nursery:
            for position, (record, offset, size) in enumerate(reads):
                nursery.start_soon(one, position, record, offset, size)
        return results

    def _resolve(self, record: HandleRecord, offset: Offset, size: Size) -> tuple[int, int]:
        file_size = self.origin.files[record.name].current.version.size
        block_size = self._block_size(record)
        start = offset.resolve(file_size, block_size, record.last_end)
        return start, size.resolve(file_size, block_size, start)

    @rule(reads=st.lists(st.tuples(st.integers(0, MAX_HANDLES - 1), offsets, sizes), min_size=1, max_size=4))
    def read(self, reads: list[tuple[int, Offset, Size]]) -> None:
        """Several reads at once, on one or several handles."""
        self._begin()
        if not self.handles:
            return
        planned: list[tuple[HandleRecord, int, int]] = []
        for pick, offset, size in reads:
            record = self._handle(pick)
            planned.append((record, *self._resolve(record, offset, size)))
        self._check(self._run(lambda: self._gather(planned)))

    async def _open_everywhere_and_read(self, name: str, offset: Offset, size: Size) -> list[Any]:
        opened = []
        for slot_index in range(len(self.slots)):
            outcome, record = await self._open(slot_index, name)
            opened.append((slot_index, outcome, record))
        reads = []
        for _, _, record in opened:
            if record is not None:
                reads.append((record, *self._resolve(record, offset, size)))
        return [opened, await self._gather(reads)]

    @rule(file=st.integers(0, 2), offset=offsets, size=sizes)
    def read_everywhere(self, file: int, offset: Offset, size: Size) -> None:
        """Every engine opens the file and reads the same place at once, ``offset`` and ``size`` relative to
        its own block size: two mounts of one cache dir reading the same bytes, or the same block number."""
        self._begin()
        name = self.names[file % len(self.names)]
        opened, results = self._run(lambda: self._open_everywhere_and_read(name, offset, size))
        for slot_index, outcome, record in opened:
            self._opened(slot_index, name, outcome, record)
        self._check(results)

    async def _stream(self, record: HandleRecord, start: int, chunk: int, count: int, depth: int) -> list[Any]:
        results: list[Any] = []
        for first in range(0, count, depth):
            batch = [(record, start + (first + i) * chunk, chunk) for i in range(min(depth, count - first))]
            results.extend(await self._gather(batch))
        return results

    @rule(
        pick=st.integers(0, MAX_HANDLES - 1),
        start=offsets,
        chunk=st.sampled_from([128 * 1024, 4096, 1024 * 1024]),
        count=st.integers(2, 12),
        depth=st.integers(1, 3),
    )
    def read_sequentially(self, pick: int, start: Offset, chunk: int, count: int, depth: int) -> None:
        """A reader going straight through, with ``depth`` reads in flight as kernel readahead has."""
        self._begin()
        if not self.handles:
            return
        record = self._handle(pick)
        offset, _ = self._resolve(record, start, Size("n"))
        self._check(self._run(lambda: self._stream(record, offset, chunk, count, depth)))

    # -- the cache keeps what it holds ------------------------------------------------------------------------

    def _remember(self, record: HandleRecord, offset: int, size: int, outcome: Outcome) -> None:
        """Note a read of whole blocks (see _WHOLE_BLOCK_READ) whose blocks must now stay in the cache dir."""
        if not self.cache_trusted or self.case.engines[0].cache_size is not None:
            return
        if len(set(self.case.block_sizes)) > 1 or size <= _WHOLE_BLOCK_READ or not outcome.value:
            return
        state = self.origin.files[record.name].current
        unchanged = record.serial == state.serial
        # The state was the file's for the whole window, so it is the version the engine pinned.
        if unchanged and state.since <= record.window[0] and record.candidates == {state.version.number}:
            self.remembered.append(Remembered(record.name, state.serial, offset, size, outcome.steps[0]))

    def _rereadable(self) -> list[Remembered]:
        return [
            r
            for r in self.remembered
            if r.serial == self.origin.files[r.name].current.serial and not self.origin.active_faults(r.name)
        ]

    @rule(engine=st.integers(0, 1), pick=st.integers(0, 15), remount=st.booleans())
    def reread_cached(self, engine: int, pick: int, remount: bool) -> None:
        """A range read before, with its blocks still in the cache, is served without fetching it again (after
        a clean remount too, when the blocks can only come from the disk)."""
        step = self._begin()
        slot_index, _ = self._slot(engine)
        if not self._rereadable() or not self.cache_trusted:
            return
        self._run(self._settle)  # cache writes of the first read (perhaps by the other engine) are on disk
        if remount:
            self._forget_engine(slot_index)
            self._run(lambda: self._replace(slot_index, crash=False))
        remembered = self._rereadable()[pick % len(self._rereadable())]
        name = remembered.name
        if "format-refetch" in AVOID and name.endswith((".zip", ".mp4", ".parquet")):
            return
        outcome, record = self._run(lambda: self._open(slot_index, name))
        self._opened(slot_index, name, outcome, record)
        if record is None:
            return
        result = self._run(lambda: self._read(record, remembered.offset, remembered.size))
        self._check([result])
        if result[3].value is None:
            return
        stop = remembered.offset + len(result[3].value)
        again = [
            r
            for r in self.origin.requests
            if r.step == step and r.name == name and r.body and r.body[0] < stop and remembered.offset < r.body[1]
        ]
        if again and self.cache_trusted:
            fetched = ", ".join(f"{r.method} {r.path} {r.headers.get('range', 'whole')} -> {r.status}" for r in again)
            raise ModelViolation(
                f"CACHED BYTES FETCHED AGAIN: bytes {remembered.offset}-{stop} of {name} (state"
                f" {remembered.serial}, unchanged) were read completely at step {remembered.step} into an"
                f" unbounded cache and nothing has dropped them legitimately since, yet re-reading them"
                f" fetched: {fetched}\n{self._describe_file(name)}"
            )

    # -- the origin changes -----------------------------------------------------------------------------------

    def _new_size(self, name: str, size: int, validators: str, same_size: bool, new_content: bool) -> int:
        file = self.origin.files[name]
        current = file.current
        if same_size or not new_content:
            size = current.version.size
        # A client cannot tell two versions of one size apart if the one it pinned had no validator at all:
        # a size that a validator-less state ever had is never reused by other content.
        burned = {s.version.size for s in file.history if s.validators == "none"}
        if new_content and (size in burned or validators == "none"):
            used = {s.version.size for s in file.history}
            while size in burned or (validators == "none" and size in used):
                size += 1
        return size

    def _change(self, name: str, size: int, validators: str, shape: Any, *, same_size: bool, new_content: bool) -> None:
        validators = self._validators(validators)
        size = self._new_size(name, size, validators, same_size, new_content)
        shape = self._shape(FileSpec(name, size, validators, shape))
        self.origin.put(name, size, validators, shape, new_content=new_content)

    @rule(
        file=st.integers(0, 2),
        data=st.data(),
        validators=st.sampled_from(VALIDATOR_MODES),
        same_size=st.booleans(),
        new_content=st.booleans(),
    )
    def change(self, file: int, data: st.DataObject, validators: str, same_size: bool, new_content: bool) -> None:
        self._begin()
        name = self.names[file % len(self.names)]
        size = data.draw(file_sizes(self.case.block_sizes), label="size")
        shape = data.draw(shapes(name), label="shape")
        self._run(
            lambda: _sync(
                lambda: self._change(name, size, validators, shape, same_size=same_size, new_content=new_content)
            )
        )

    async def _read_while_changing(self, record: HandleRecord, change: Callable[[], None]) -> list[Any]:
        size = self.origin.files[record.name].current.version.size
        block = self._block_size(record)
        results: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                results.extend(await self._stream(record, 0, max(block // 2, 4096), max(2, size // block + 1), 2))

            nursery.start_soon(reader)
            with trio.move_on_after(0.5):
                await self.origin.wait_for_get()
            change()
        return results

    @rule(pick=st.integers(0, MAX_HANDLES - 1), same_size=st.booleans(), validators=st.sampled_from(VALIDATOR_MODES))
    def change_while_reading(self, pick: int, same_size: bool, validators: str) -> None:
        """The file changes while a reader is in the middle of it (once its first request reached the origin)."""
        self._begin()
        if not self.handles:
            return
        record = self._handle(pick)
        current = self.origin.files[record.name].current
        new_size = current.version.size if same_size else current.version.size + 4096

        def change() -> None:
            self._change(
                record.name, new_size, validators, current.version.shape, same_size=same_size, new_content=True
            )

        self._check(self._run(lambda: self._read_while_changing(record, change)))

    @rule(
        file=st.integers(0, 2),
        switch=st.sampled_from(
            [
                ("ignores_if_range", True),
                ("ignores_if_range", False),
                ("ignores_range", "advertised"),
                ("ignores_range", "silent"),
                ("ignores_range", None),
                ("slow", True),
                ("slow", False),
                ("redirect", True),
                ("redirect", False),
            ]
        ),
    )
    def behave(self, file: int, switch: tuple[str, Any]) -> None:
        """Switch one behaviour of the origin for a file: ignore If-Range (answer 206 from the current version
        whatever If-Range says, as some proxies do), ignore Range (200 with the whole file, saying
        Accept-Ranges: none or nothing), slow bodies, a redirect to an alias path (which answers 404 once the
        redirect is switched off, like an expired signed URL)."""
        self._begin()
        behaviour = self.origin.files[self.names[file % len(self.names)]].behaviour
        name, value = switch
        avoided = {"ignores_if_range": "if-range", "ignores_range": "ignore-range", "redirect": "redirect"}
        if avoided.get(name) in AVOID:
            value = None if name == "ignores_range" else False
        setattr(behaviour, name, value)

    @rule(file=st.integers(0, 2), kind=st.sampled_from(("over", *FAULT_KINDS)), count=st.integers(1, 12))
    def fault(self, file: int, kind: str, count: int) -> None:
        """Arm a burst: the file's next ``count`` requests fail that way ("over": every burst ends now)."""
        self._begin()
        if kind == "over":
            self.origin.disarm_all()
            return
        if "revalidate" in AVOID:
            count = min(count, 7)
        self.origin.arm(self.names[file % len(self.names)], kind, count)

    @rule(
        engine=st.integers(0, 1),
        file=st.integers(0, 2),
        kind=st.sampled_from(["503", "429", "refuse"]),
        count=st.integers(8, 12),
    )
    def outage(self, engine: int, file: int, kind: str, count: int) -> None:
        """The origin fails every request for the file while an engine opens it (a revalidation during an
        outage); then it is back."""
        self._begin()
        slot_index, _ = self._slot(engine)
        name = self.names[file % len(self.names)]
        if "revalidate" in AVOID:
            count = 7
        burst = self.origin.arm(name, kind, count)
        outcome, record = self._run(lambda: self._open(slot_index, name))
        self._opened(slot_index, name, outcome, record)
        burst.exhaust(self.origin.step)

    @rule(engine=st.integers(0, 1), count=st.integers(1, 6))
    def cache_fault(self, engine: int, count: int) -> None:
        """The cache's next ``count`` disk or index operations fail (a disk error, a broken index)."""
        step = self._begin()
        if "cache-faults" in AVOID:
            return
        slot_index, slot = self._slot(engine)
        slot.bundle.cache.remaining = count
        self.model.cache_faults.setdefault(slot_index, []).append((step, None))
        self.cache_trusted = False

    # -- engines restart and crash ----------------------------------------------------------------------------

    async def _settle(self) -> bool:
        return await settle([slot.bundle for slot in self.slots], timeout=5)

    def _forget_engine(self, slot_index: int) -> None:
        for record in [r for r in self.handles if r.engine == slot_index]:
            self.handles.remove(record)

    async def _replace(self, slot_index: int, *, crash: bool) -> None:
        slot = self.slots[slot_index]
        self._check_engine(slot.bundle)
        if crash:
            await slot.bundle.crash()
            self.graveyard.append(slot.bundle)
        else:
            await self._settle()  # cache writes under way reach the disk
            await slot.bundle.aclose()
        self._check_engine(slot.bundle)
        slot.bundle = await self._build(slot.bundle.settings)
        slot.generation += 1

    @rule(engine=st.integers(0, 1))
    def restart(self, engine: int) -> None:
        """A clean unmount and mount again."""
        self._begin()
        slot_index, _ = self._slot(engine)
        self._forget_engine(slot_index)
        self._run(lambda: self._replace(slot_index, crash=False))

    @rule(engine=st.integers(0, 1), damage=st.sampled_from([None, "truncate", "flip"]), pick=st.integers(0, 99))
    def crash(self, engine: int, damage: str | None, pick: int) -> None:
        """kill -9, optionally with one block file torn or corrupted on disk, and mount again."""
        self._begin()
        slot_index, _ = self._slot(engine)
        self._forget_engine(slot_index)
        self.remembered.clear()  # a write in flight may be lost
        self._run(lambda: self._crash_and_damage(slot_index, damage, pick))

    async def _crash_and_damage(self, slot_index: int, damage: str | None, pick: int) -> None:
        slot = self.slots[slot_index]
        await slot.bundle.crash()
        self.graveyard.append(slot.bundle)
        self._check_engine(slot.bundle)
        # BlockCache's piece files (pieces/ab/OBJECT/START+LENGTH), asserted so that a change of the layout cannot
        # silently make crashes damage nothing (this once looked in 0.1's "blocks" directory, in vain).
        pieces = self.cache_dir / "pieces"
        assert pieces.is_dir(), f"no {pieces}: the cache layout changed, and crashes would damage nothing"
        blocks = sorted(p for p in pieces.glob("*/*/*") if not p.name.startswith("."))
        if damage and blocks:
            self.damaged = True
            victim = blocks[pick % len(blocks)]
            data = bytearray(victim.read_bytes())
            if damage == "truncate":
                victim.write_bytes(data[: pick * len(data) // 100])
            elif data:
                data[pick * len(data) // 100] ^= 0x5A
                victim.write_bytes(bytes(data))
        slot.bundle = await self._build(slot.bundle.settings)
        slot.generation += 1

    @rule()
    def settle(self) -> None:
        """Wait until every engine is idle: nothing may keep running forever."""
        self._begin()
        if not self._run(self._settle):
            raise ModelViolation(f"NEVER SETTLES: tasks were still running after 5 s\n{self._run(_task_tree)}")

    # -- invariants -------------------------------------------------------------------------------------------

    def _check_cache_warning(self, record: logging.LogRecord) -> None:
        """A cache that cannot write although nothing failed, or finds a corrupt block although nothing was
        damaged (and both engines cut files alike), is broken itself."""
        message = record.getMessage()
        if self.model.cache_faults or "cache-warnings" in AVOID:
            return  # an injected fault may be behind it
        if "cannot write" in message:
            raise ModelViolation(f"CACHE WRITE FAILED with no disk fault: {message}")
        if "corrupt" in message and not self.damaged and len(set(self.case.block_sizes)) == 1:
            raise ModelViolation(f"CORRUPT BLOCK although no block file was damaged: {message}")

    def _check_engine(self, bundle: EngineBundle) -> None:
        if bundle.failures:
            trace = "".join(traceback.format_exception(bundle.failures[0]))
            raise ModelViolation(f"ENGINE DIED: an exception escaped its service nursery\n{trace}")

    @invariant()
    def engines_alive_and_nothing_logged_at_error(self) -> None:
        if self.case.settle_between_steps and self.loop is not None and not self.loop.frozen:
            self._run(self._settle)
        for slot in self.slots:
            self._check_engine(slot.bundle)
        with self.log.records_lock:
            fresh = self.log.records[self._log_seen :]
            self._log_seen = len(self.log.records)
        for record in fresh:
            if record.name.startswith("rangefs.cache"):
                self.cache_trusted = False  # a block dropped or unwritten: it may be fetched again
                self._check_cache_warning(record)
            injected = (
                record.exc_info is not None and record.exc_info[1] is not None and is_injected(record.exc_info[1])
            )
            if record.levelno >= logging.ERROR and not injected:
                text = logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)
                raise ModelViolation(f"LOGGED AT ERROR: {text}")


def _sync(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Run a synchronous function in the trio loop's thread (engine state is only touched there)."""

    async def run() -> Any:
        return function(*args)

    return run()


async def _task_tree() -> str:
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        lines.append("  " * depth + task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)  # type: ignore[arg-type]
    return "\n".join(lines)


RangefsMachine.TestCase.settings = model_settings()
# httpx chains async generators (aiter_raw over BoundAsyncStream over the transport's stream); when a fetch
# stops early rangefs closes the outer one, and the inner ones are finalised by the garbage collector, which
# trio reports as a ResourceWarning. Nothing of ours leaks; the machine's own checks stay strict.
TestModel = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")(RangefsMachine.TestCase)

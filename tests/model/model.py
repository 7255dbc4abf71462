"""The reference model: which bytes a read may return, which errors are explained, and why a read is wrong.

rangefs' promise, as the model checks it on every read:

- An open pins ONE content version: one the origin held at some step within the *window* of the open. The
  window is [open start, open end] when every open revalidates (metadata TTL 0), and reaches back to the
  start of the test case when metadata may be older than the open (a long TTL, or a probe that failed
  during the open so that the known version stays readable).
- Every read through the handle returns exactly the bytes of that version at that offset: as many as asked,
  fewer only at that version's end of file, none at or past it. All reads of a handle agree on the version.
- Or the operation fails with a RangefsError that something explains: a fault burst on that file (or an
  injected cache fault on that engine) active during the operation, or a change of the file (content or
  validators) since the window started.
- Nothing else: no other exception, no hang (every operation has a deadline), nothing logged at ERROR.

A wrong read is explained by ``explain_bytes``: for each piece of the answer, which versions of which file
match it there, or where else (another offset, another version or file) those bytes come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.model.content import locate, matching_runs
from tests.model.origin import ModelOrigin, Version


@dataclass
class ReadRecord:
    offset: int
    size: int
    length: int
    step: int
    versions: frozenset[int]  # versions it matched


@dataclass
class HandleRecord:
    """One open handle as the model sees it."""

    engine: int  # slot
    generation: int  # incarnation of the engine in that slot
    name: str
    handle: int
    opened: tuple[int, int]  # steps
    window: tuple[int, int]
    candidates: set[int]
    reads: list[ReadRecord] = field(default_factory=list)
    last_end: int = 0  # end of the last read, for sequential readers
    serial: int = 0  # the origin's state of the file when the open began

    def label(self) -> str:
        return f"handle {self.handle} of engine {self.engine}.{self.generation} on {self.name}"


class ModelViolation(AssertionError):
    pass


# --revalidate-after (the default, 1 s) and a second of slack for a loaded machine.
_FAILURE_REMEMBERED = 2.0


class Model:
    def __init__(self, origin: ModelOrigin, *, metadata_ttl: float) -> None:
        self.origin = origin
        self.metadata_ttl = metadata_ttl
        self.cache_faults: dict[int, list[tuple[int, int | None]]] = {}  # engine slot -> (armed, over) steps

    # -- windows and explanations --------------------------------------------------------------------------

    def window(self, name: str, start: int, stop: int) -> tuple[int, int]:
        """Steps at which the version an open pins may have been the origin's."""
        if self.metadata_ttl > 0 or self.fault_within(name, start, stop):
            return (0, stop)
        return (start, stop)

    def versions_within(self, name: str, start: int, stop: int) -> set[int]:
        return {s.version.number for s in self.origin.files[name].history if s.alive_within(start, stop)}

    def fault_within(self, name: str, start: int, stop: int) -> bool:
        if any(burst.active_within(start, stop) for burst in self.origin.files[name].faults):
            return True
        # A refused connection marks the whole host down (the circuit breaker) for a cool-down measured in
        # seconds, not steps: from then on any file of the host may fail, or keep the version it knows.
        return any(
            burst.kind == "refuse" and burst.armed_at <= stop
            for file in self.origin.files.values()
            for burst in file.faults
        )

    def cache_fault_within(self, engine: int, start: int, stop: int) -> bool:
        return any(
            armed <= stop and (over is None or over >= start) for armed, over in self.cache_faults.get(engine, [])
        )

    def change_within(self, name: str, start: int, stop: int) -> bool:
        return any(start < state.since <= stop for state in self.origin.files[name].history)

    def explain_error(self, name: str, engine: int, window_start: int, start: int, stop: int) -> str | None:
        """Why an operation on ``name`` that ran during steps [start, stop] may fail; None if nothing does."""
        if self.fault_within(name, start, stop):
            return "a fault burst on the file was active"
        if any(burst.ended_within(_FAILURE_REMEMBERED) for burst in self.origin.files[name].faults):
            # The engine tries a file whose probe failed again at most once per --revalidate-after (1 s):
            # an open soon after a burst may meet the failure the burst caused, at a later step.
            return "a fault burst on the file ended less than --revalidate-after ago"
        if self.cache_fault_within(engine, start, stop):
            return "an injected cache fault was active"
        if self.change_within(name, window_start, stop):
            return "the file changed since the window of its open began"
        return None

    # -- opens and reads -----------------------------------------------------------------------------------

    def opened(self, engine: int, generation: int, name: str, handle: int, *, steps: tuple[int, int]) -> HandleRecord:
        start, stop = steps
        window = self.window(name, start, stop)
        candidates = self.versions_within(name, *window)
        return HandleRecord(engine, generation, name, handle, (start, stop), window, candidates)

    def check_read(self, record: HandleRecord, offset: int, size: int, data: bytes, *, steps: tuple[int, int]) -> None:
        """Raise ModelViolation unless ``data`` is the answer of one version the handle may have pinned."""
        versions = self.origin.files[record.name].versions()
        matching = {number for number in record.candidates if _answer_of(versions[number], offset, size) == data}
        if not matching:
            raise ModelViolation(self.explain_bytes(record, offset, size, data, steps))
        record.candidates = matching
        record.reads.append(ReadRecord(offset, size, len(data), steps[0], frozenset(matching)))
        record.last_end = offset + len(data)

    def explain_bytes(self, record: HandleRecord, offset: int, size: int, data: bytes, steps: tuple[int, int]) -> str:
        file = self.origin.files[record.name]
        versions = file.versions()
        lines = [
            f"WRONG BYTES: read({offset}, {size}) through {record.label()} at steps {steps[0]}-{steps[1]}"
            f" returned {len(data)} bytes.",
            f"  opened at steps {record.opened[0]}-{record.opened[1]}; versions it may have pinned (window"
            f" {record.window[0]}-{record.window[1]}): {sorted(record.candidates)}",
            "  history of the file at the origin:",
            *(f"    {state}" for state in file.history),
        ]
        if record.reads:
            lines.append("  earlier reads of this handle (offset+size -> bytes, versions they matched):")
            lines.extend(
                f"    step {r.step}: {r.offset}+{r.size} -> {r.length} bytes, v{sorted(r.versions)}"
                for r in record.reads
            )
        for number, version in sorted(versions.items()):
            expected = _answer_of(version, offset, size)
            alive = "pinnable" if number in record.candidates else "not pinnable"
            lines.append(f"  against v{number} ({alive}, {version.size} bytes, expects {len(expected)} bytes here):")
            runs = matching_runs(data, version.content, offset, _granule(len(data)))
            lines.extend(f"    bytes {a}-{b}: {'equal' if same else 'DIFFERENT'}" for a, b, same in runs[:12])
            if len(runs) > 12:
                lines.append(f"    ... {len(runs) - 12} more runs")
        lines.extend(self._provenance(record, offset, data))
        return "\n".join(lines)

    def _provenance(self, record: HandleRecord, offset: int, data: bytes) -> list[str]:
        """Where the answer stops matching the pinnable version it matches longest, and where the bytes from
        there on come from, looking in every version of every file."""
        versions = self.origin.files[record.name].versions()
        best, first_wrong = None, -1
        for number in sorted(record.candidates):
            expected = _answer_of(versions[number], offset, len(data))
            wrong = next((i for i, (a, b) in enumerate(zip(data, expected, strict=False)) if a != b), None)
            if wrong is None:
                wrong = min(len(data), len(expected))
            if wrong > first_wrong:
                best, first_wrong = number, wrong
        if best is None or first_wrong >= len(data):
            return []
        piece = data[first_wrong : first_wrong + 256]
        everything = {
            f"{name} v{number}": version.content
            for name, file in self.origin.files.items()
            for number, version in file.versions().items()
        }
        found = locate(piece, everything)
        at = offset + first_wrong
        where = ", ".join(f"{label} at offset {position} (shift {position - at:+d})" for label, position in found)
        zeros = " (zero bytes)" if not piece.strip(b"\0") else ""
        return [
            f"  the answer matches v{best} up to file offset {at}; the {len(piece)} bytes from there{zeros} are"
            f" found in: {where or 'no version of any file'}"
        ]


def _answer_of(version: Version, offset: int, size: int) -> bytes:
    start = min(max(offset, 0), version.size)
    return version.content[start : min(start + max(size, 0), version.size)]


def _granule(length: int) -> int:
    return max(64, min(4096, length // 16 or 64))

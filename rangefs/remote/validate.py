"""Checks that turn an HTTP answer into trusted bytes, or into an error that says what was wrong.

Pure functions over status and headers, so every way a range response can be wrong is unit-tested. Header
values are untrusted: whatever they hold, these raise RemoteError subclasses only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rangefs.errors import InvalidResponse, RangesUnsupported, RemoteChanged, RemoteStatusError
from rangefs.ranges import ByteRange
from rangefs.remote.headers import parse_digits
from rangefs.remote.metadata import RemoteMetadata

# ASCII digits only, at most 19 (below 2**63): Python's \d and int() also take other scripts' digits.
_CONTENT_RANGE = re.compile(r"^[ \t]*bytes[ \t]+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)[ \t]*$", re.I | re.A)
_UNSATISFIED_RANGE = re.compile(r"^[ \t]*bytes[ \t]+\*/([0-9]{1,19})[ \t]*$", re.I | re.A)


def parse_content_range(value: str) -> tuple[ByteRange, int | None]:
    """``bytes 0-99/1000`` -> (ByteRange(0, 100), 1000); the total is None for ``*``.

    Raises ValueError, and nothing else, for anything that is not such a range."""
    match = _CONTENT_RANGE.match(value)
    if not match:
        raise ValueError(f"malformed Content-Range {value!r}")
    first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
    if last < first:
        raise ValueError(f"malformed Content-Range {value!r}")
    return ByteRange(first, last + 1), None if total == "*" else int(total)


def parse_unsatisfied_range(value: str) -> int | None:
    """The total size from a 416 answer's ``bytes */SIZE``, if present."""
    match = _UNSATISFIED_RANGE.match(value)
    return int(match.group(1)) if match else None


def same_version(metadata: RemoteMetadata, headers: Mapping[str, str]) -> bool:
    """Whether an answer's validators (where it sends any) are those of ``metadata``."""
    length = headers.get("content-length")
    if length is not None and parse_digits(length) != metadata.size:
        return False
    etag, modified = headers.get("etag"), headers.get("last-modified")
    if metadata.strong_etag is not None and etag is not None:
        return etag == metadata.etag
    if metadata.last_modified is not None and modified is not None:
        return modified == metadata.last_modified
    return metadata.if_range is None  # nothing to compare with either way


def check_range_response(
    url: str, status: int, headers: Mapping[str, str], *, wanted: ByteRange, metadata: RemoteMetadata
) -> None:
    """Raise unless the answer is exactly the ``wanted`` bytes of the version ``metadata`` describes."""
    file_size = metadata.size
    if status == 200:
        if same_version(metadata, headers):
            raise RangesUnsupported(url, "server ignores Range and sends the whole file (200 instead of 206)")
        raise RemoteChanged(url, "server sent another version of the file to an If-Range request: the file changed")
    if status == 416:
        raise RemoteChanged(url, f"range {wanted.header_value()} not satisfiable: the file shrank")
    if status != 206:
        raise RemoteStatusError(url, status)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidResponse(url, f"range answered with Content-Encoding {encoding!r}")
    content_range = headers.get("content-range")
    if content_range is None:
        raise InvalidResponse(url, "206 answer without Content-Range")
    try:
        got, total = parse_content_range(content_range)
    except ValueError as error:
        raise InvalidResponse(url, str(error)) from None
    if got != wanted:
        raise InvalidResponse(url, f"asked for {wanted.header_value()}, got Content-Range {content_range!r}")
    if total is not None and total != file_size:
        raise RemoteChanged(url, f"size changed from {file_size} to {total} bytes")
    length = headers.get("content-length")
    if length is not None and parse_digits(length) != wanted.length:
        raise InvalidResponse(url, f"Content-Length {length!r} for a range of {wanted.length} bytes")

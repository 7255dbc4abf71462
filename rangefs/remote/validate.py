"""Checks that turn an HTTP answer into trusted bytes, or into an error that says what was wrong.

Pure functions over status and headers, so every way a range response can be wrong is unit-tested. Header
values are untrusted: whatever they hold, these raise RemoteError subclasses only.

Every answer is compared with the version its reader pinned, not only trusted to have honoured If-Range:
several S3-compatible stores and caching proxies ignore If-Range and answer a 206 from a newer version. For
each validator the pinned version has:

- a different value in the answer means another version: RemoteChanged. ETags are compared by their opaque
  tag (``W/"x"`` equals ``"x"``): servers weaken a tag when they compress, and identity encoding is
  required and checked here, so a flipped ``W/`` alone says nothing about the bytes.
- a missing one is not compared: some CDNs strip validators from range answers, which is no proof of a
  change. A 206 is still vouched for by the total size in its Content-Range and by If-Range; where no
  If-Range could be sent (the version's only validator is a weak ETag), nothing vouches for it, so it must
  carry one of the version's validators itself.
- a 200 (a whole file, by a server that ignores Range or to an If-Range that failed) has neither voucher,
  so it counts as the pinned version only if it also carries at least one of the pinned version's
  validators (or the pinned version has none) and its Content-Length is the size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rangefs.errors import InvalidResponse, RangesUnsupported, RemoteChanged, RemoteStatusError
from rangefs.ranges import ByteRange
from rangefs.remote.headers import opaque_tag, parse_digits, parse_http_date
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


def version_difference(metadata: RemoteMetadata, headers: Mapping[str, str]) -> str | None:
    """How an answer's validators differ from those of ``metadata``; None if none that both have differs."""
    etag = headers.get("etag")
    if metadata.etag is not None and etag is not None and opaque_tag(etag) != opaque_tag(metadata.etag):
        return f"ETag changed from {metadata.etag!r} to {etag!r}"
    modified = headers.get("last-modified")
    if metadata.last_modified is not None and modified is not None and not _same_date(metadata.last_modified, modified):
        return f"Last-Modified changed from {metadata.last_modified!r} to {modified!r}"
    # Validators the answer has but the pinned version had not, with none in common: another representation
    # (found by the model-based test: a file with only an ETag became one with only a Last-Modified, and a
    # server ignoring If-Range sent the new bytes). An answer with no validators at all is left to If-Range.
    shared = (metadata.etag is not None and etag is not None) or (
        metadata.last_modified is not None and modified is not None
    )
    if not shared and (etag is not None or modified is not None) and (metadata.etag or metadata.last_modified):
        return "the answer's validators are not the pinned version's (none in common)"
    return None


def _same_date(pinned: str, answered: str) -> bool:
    # A proxy may reformat a date; compare instants where both parse, the text otherwise.
    pinned_time, answered_time = parse_http_date(pinned), parse_http_date(answered)
    if pinned_time is not None and answered_time is not None:
        return pinned_time == answered_time
    return pinned.strip() == answered.strip()


def whole_file_difference(metadata: RemoteMetadata, headers: Mapping[str, str]) -> str | None:
    """Why a whole-file (200) answer is not proven to be the version ``metadata`` describes; None if it is."""
    length = headers.get("content-length")
    if length is not None and parse_digits(length) != metadata.size:
        return f"Content-Length {length!r} instead of the {metadata.size} bytes of the file"
    difference = version_difference(metadata, headers)
    if difference is not None:
        return difference
    return _unproven(metadata, headers)


def _unproven(metadata: RemoteMetadata, headers: Mapping[str, str]) -> str | None:
    """Why an answer cannot be told to be of the version ``metadata`` describes by its own validators (it
    carries none of the version's); None if it carries one, or the version has none to carry."""
    shares_validator = (metadata.etag is not None and headers.get("etag") is not None) or (
        metadata.last_modified is not None and headers.get("last-modified") is not None
    )
    if shares_validator or (metadata.etag is None and metadata.last_modified is None):
        return None
    return "the answer carries none of the validators (ETag, Last-Modified) of the version read"


def same_version(metadata: RemoteMetadata, headers: Mapping[str, str]) -> bool:
    """Whether a whole-file (200) answer is the version ``metadata`` describes."""
    return whole_file_difference(metadata, headers) is None


def check_range_response(
    url: str, status: int, headers: Mapping[str, str], *, wanted: ByteRange, metadata: RemoteMetadata
) -> None:
    """Raise unless the answer is exactly the ``wanted`` bytes of the version ``metadata`` describes."""
    if status == 200:
        difference = whole_file_difference(metadata, headers)
        if difference is None:
            raise RangesUnsupported(url, "server ignores Range and sends the whole file (200 instead of 206)")
        raise RemoteChanged(url, f"the file changed: a whole-file answer to an If-Range request ({difference})")
    if status == 416:
        raise RemoteChanged(url, f"range {wanted.header_value()} not satisfiable: the file shrank")
    if status != 206:
        raise RemoteStatusError(url, status)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidResponse(url, f"range answered with Content-Encoding {encoding!r}")
    difference = version_difference(metadata, headers)
    if difference is None and metadata.if_range is None:
        # Found by the model-based test: a weak-ETag version, and a server that sent a newer version of the
        # same size with no validators at all. No If-Range was sent, so nothing else vouches for the bytes.
        difference = _unproven(metadata, headers)
    if difference is not None:
        raise RemoteChanged(url, f"the file changed: a range of another version ({difference})")
    content_range = headers.get("content-range")
    if content_range is None:
        raise InvalidResponse(url, "206 answer without Content-Range")
    try:
        got, total = parse_content_range(content_range)
    except ValueError as error:
        raise InvalidResponse(url, str(error)) from None
    if got != wanted:
        raise InvalidResponse(url, f"asked for {wanted.header_value()}, got Content-Range {content_range!r}")
    if total is not None and total != metadata.size:
        raise RemoteChanged(url, f"size changed from {metadata.size} to {total} bytes")
    length = headers.get("content-length")
    if length is not None and parse_digits(length) != wanted.length:
        raise InvalidResponse(url, f"Content-Length {length!r} for a range of {wanted.length} bytes")

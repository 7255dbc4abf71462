"""Every way a range response can be wrong is refused before a byte is used."""

from __future__ import annotations

import pytest

from rangefs.errors import InvalidResponse, RangesUnsupported, RemoteChanged, RemoteStatusError
from rangefs.ranges import ByteRange
from rangefs.remote.metadata import RemoteMetadata
from rangefs.remote.validate import check_range_response, parse_content_range

WANTED = ByteRange(100, 200)
GOOD = {"content-range": "bytes 100-199/1000", "content-length": "100"}


OURS = RemoteMetadata("http://h/f", 1000, etag='"v1"', last_modified="Tue, 14 Nov 2023 22:13:20 GMT")


def check(status: int, headers: dict[str, str], metadata: RemoteMetadata = OURS) -> None:
    check_range_response("http://h/f", status, headers, wanted=WANTED, metadata=metadata)


def test_exact_answer_passes() -> None:
    check(206, GOOD)
    check(206, {"content-range": "bytes 100-199/*"})


@pytest.mark.parametrize(
    ("status", "headers", "error", "words"),
    [
        (200, {"etag": '"v2"', "content-length": "1000"}, RemoteChanged, "changed"),
        (200, {"etag": '"v1"', "content-length": "999"}, RemoteChanged, "changed"),
        (200, {"etag": '"v1"', "content-length": "1000"}, RangesUnsupported, "ignores Range"),
        (416, {}, RemoteChanged, "shrank"),
        (404, {}, RemoteStatusError, "404"),
        (206, {}, InvalidResponse, "without Content-Range"),
        (206, {**GOOD, "content-range": "bytes 100-198/1000"}, InvalidResponse, "asked for bytes=100-199"),
        (206, {**GOOD, "content-range": "bytes 0-99/1000"}, InvalidResponse, "asked for"),
        (206, {**GOOD, "content-range": "items 100-199/1000"}, InvalidResponse, "malformed"),
        (206, {**GOOD, "content-range": "bytes 100-199/2000"}, RemoteChanged, "size changed"),
        (206, {**GOOD, "content-length": "99"}, InvalidResponse, "Content-Length 99"),
        (206, {**GOOD, "content-encoding": "gzip"}, InvalidResponse, "gzip"),
    ],
)
def test_wrong_answers_are_refused(status: int, headers: dict[str, str], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        check(status, headers)


def test_200_without_validators_means_ranges_unsupported() -> None:
    with pytest.raises(RangesUnsupported):
        check(200, {"content-length": "1000"}, RemoteMetadata("http://h/f", 1000))


def test_content_range_parsing() -> None:
    assert parse_content_range("bytes 0-0/1") == (ByteRange(0, 1), 1)
    assert parse_content_range("Bytes 5-9/*") == (ByteRange(5, 10), None)
    with pytest.raises(ValueError):
        parse_content_range("bytes 9-5/10")


def test_validator_choice_and_cache_identity() -> None:
    strong = RemoteMetadata("http://h/f", 10, etag='"abc"', last_modified="Tue, 14 Nov 2023 22:13:20 GMT")
    weak = RemoteMetadata("http://h/f", 10, etag='W/"abc"', last_modified="Tue, 14 Nov 2023 22:13:20 GMT")
    assert strong.if_range == '"abc"'
    assert weak.if_range == "Tue, 14 Nov 2023 22:13:20 GMT"  # weak ETags cannot guard byte ranges
    assert strong.mtime == 1_700_000_000
    resized = RemoteMetadata("http://h/f", 11, etag='"abc"', last_modified=strong.last_modified)
    other_url = RemoteMetadata("http://h/g", 10, etag='"abc"', last_modified=strong.last_modified)
    assert len({strong.object_id, weak.object_id, resized.object_id, other_url.object_id}) == 4

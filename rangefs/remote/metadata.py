"""What a probe learns about a remote file, and the validators that identify one version of it.

A version is identified by every validator the server gives: the ETag, weak or strong, Last-Modified and
the size. All of them go into ``object_id``, the cache identity, so a change of any (a weak ETag included)
gives the new version other blocks. Only a strong ETag or Last-Modified can guard a range request
(``if_range``): a weak ETag promises semantic, not byte, equality (RFC 9110 8.8.1, 13.1.5), so for a version
known only by a weak ETag every answer is compared with it instead (``validate`` compares every answer with
every validator anyway).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rangefs.remote.headers import parse_http_date

# Part of every object id: bumping it makes blocks cached under an older identity scheme unreachable.
# 2: the ETag is part of the identity even when weak (1 left weak ETags out).
CACHE_FORMAT_VERSION = 2


@dataclass(frozen=True, slots=True)
class RemoteMetadata:
    """Size and version of a remote file as the server described it."""

    url: str
    size: int
    etag: str | None = None
    last_modified: str | None = None
    accepts_ranges: bool = True

    @property
    def strong_etag(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return None

    @property
    def if_range(self) -> str | None:
        """The ``If-Range`` value that makes the server refuse a range of any other version (never weak)."""
        for validator in (self.strong_etag, self.last_modified):
            # A validator with bytes outside printable ASCII cannot be sent back as it came (httpx encodes
            # header values as ASCII); the answers are still compared with it.
            if validator and validator.isascii() and validator.isprintable():
                return validator
        return None

    @property
    def mtime(self) -> float | None:
        """Last-Modified as seconds since the epoch, when the server sent a parseable one."""
        return parse_http_date(self.last_modified)

    @property
    def object_id(self) -> str:
        """Cache identity: blocks of another URL, version or size can never be mistaken for this one's."""
        parts = (CACHE_FORMAT_VERSION, self.url, self.etag or "", self.last_modified or "", self.size)
        return hashlib.sha256("\0".join(map(str, parts)).encode("utf-8", "surrogatepass")).hexdigest()

    def same_version(self, other: RemoteMetadata) -> bool:
        """Whether both name one version (the same ``object_id``), without hashing: every read asks this."""
        return (self.url, self.etag, self.last_modified, self.size) == (
            other.url,
            other.etag,
            other.last_modified,
            other.size,
        )

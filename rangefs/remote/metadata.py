"""What a probe learns about a remote file, and the validator that pins one version of it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rangefs.remote.headers import parse_http_date

CACHE_FORMAT_VERSION = 1


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
        # Weak ETags (W/"...") promise semantic, not byte, equality: useless for byte ranges (RFC 9110 8.8.1).
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return None

    @property
    def if_range(self) -> str | None:
        """The ``If-Range`` value that makes the server refuse a range of any other version."""
        return self.strong_etag or self.last_modified

    @property
    def mtime(self) -> float | None:
        """Last-Modified as seconds since the epoch, when the server sent a parseable one."""
        return parse_http_date(self.last_modified)

    @property
    def object_id(self) -> str:
        """Cache identity: blocks of another URL, version or size can never be mistaken for this one's."""
        parts = (CACHE_FORMAT_VERSION, self.url, self.strong_etag or "", self.last_modified or "", self.size)
        return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()

    def same_version(self, other: RemoteMetadata) -> bool:
        return self.object_id == other.object_id

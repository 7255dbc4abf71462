"""Plain counters of traffic, filled where it happens and shown by ``rangefs stats`` and the metrics endpoint.

The engine keeps one ``FileTraffic`` per remote file and one for the whole engine; it hands them to the parts
that do the work (the HTTP client counts requests, retries, errors and bytes; the block store counts bytes
served and hits), which add to each tally given beside their own totals. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestTally:
    """What range and whole-file requests cost: counted by the HTTP client."""

    # GET requests sent for data: each retry, and each resume of a body cut short, is one more.
    requests: int = 0
    # Body bytes received from the origin (whole requests: a read is rounded to blocks or pieces).
    bytes_fetched: int = 0
    # Attempts that failed and were tried again after a backoff.
    retries: int = 0
    # Attempts that failed (retried or not): connection failures, timeouts, bad or refused answers.
    errors: int = 0
    # Bytes asked for and not yet received (a gauge: it goes down as bodies arrive).
    bytes_in_flight: int = 0


@dataclass
class ReadTally:
    """What reads were served: counted by the block store."""

    # Bytes returned to readers.
    bytes_served: int = 0
    # Of those, bytes found in memory or in the disk cache, so the read did not wait for the network.
    bytes_hit: int = 0


@dataclass
class FileTraffic(RequestTally, ReadTally):
    """Everything counted for one remote file (or, summed as it happens, for the whole engine)."""

    # Reads by a reader (a FUSE read, a file object's read), and how many of them failed.
    reads: int = 0
    read_errors: int = 0

    @property
    def volume(self) -> int:
        """Bytes moved either way: what ranks the busiest files."""
        return self.bytes_served + self.bytes_fetched

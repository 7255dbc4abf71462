"""Format-aware first open: which bytes a zip, MP4/MOV or Parquet reader will want first, found by parsing.

Tools read a file's index before its data: ``unzip -l`` reads the end-of-central-directory record at the end
and then the central directory, ``ffprobe`` reads the ``moov`` box wherever it is (at the end of a file not
written for streaming), a Parquet reader reads the footer. Fetched before the tool asks, those reads become
cache hits, and the open costs a round trip or two instead of one per tool request.

Each planner is a pure state machine: ``next_range()`` says which bytes it needs to look at, ``feed()``
hands them over, and ``wanted()`` is what to prefetch once it knows. It never asks for more than the
structure it parses (plus the block it sits in), and gives up quietly on anything it does not recognise.

Every plan ends, whatever the bytes: the prefetcher loops until ``next_range()`` is None, and a cached read
returns without yielding to trio, so a planner that kept asking would freeze the whole mount. Three rules
make sure it cannot:

- ``feed`` hands a subclass exactly the bytes it asked for; a read that does not cover them (a short read:
  the object is not ``file_size`` bytes after all) ends the plan, since asking again would get the same.
- Each feed either finishes or moves on to bytes strictly further into the file (the MP4 walk parses at least
  one box header per feed), and a structure that cannot fit before EOF ends the plan; the zip plan has a fixed
  sequence of at most three reads instead (end records, wider search, directory).
- A hard bound, ``MAX_FEEDS``, abandons any plan still asking after 64 feeds, so even a future planner
  bug costs at most 64 reads. ``feed`` is final: subclasses implement ``_feed`` and cannot skip the count.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import final

from rangefs.ranges import ByteRange

# The end-of-central-directory record is 22 bytes plus a comment of up to 65,535.
_EOCD_SEARCH = 22 + 65_535
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL_ENTRY = b"PK\x01\x02"
_ENTRY_FIELDS = struct.Struct("<IIHHH")  # a directory entry's sizes and name, extra and comment lengths
_ENTRY_HEADER = struct.Struct("<I")  # its local header's offset
# The zip plan's first read: the end records of an archive without a comment (22 bytes, ZIP64's 76 more) and
# then some, within the ~14 KiB a connection carries in its first round trip.
_EOCD_FIRST_READ = 8 * 1024
# A central directory up to this size (about 50,000 entries) is parsed for the members' extents.
_DIRECTORY_PARSE_MAX = 4 * 1024 * 1024
# An index larger than this is not prefetched whole: the tool will read it sequentially anyway.
MAX_INDEX_BYTES = 64 * 1024 * 1024

ZIP_SUFFIXES = (".zip", ".jar", ".war", ".whl", ".apk", ".epub", ".docx", ".xlsx", ".pptx", ".odt", ".nupkg")
MP4_SUFFIXES = (".mp4", ".m4v", ".m4a", ".mov", ".3gp", ".mj2", ".heic")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Feeds after which a plan is abandoned. Zip and Parquet need one; MP4 one plus one per top-level box that
# starts past the first read (two for ftyp, mdat, moov written without faststart). 64 is far above that,
# and small enough that a runaway plan costs a few dozen small reads rather than a frozen mount.
MAX_FEEDS = 64
# Parquet readers read this much of the end first (pyarrow's default footer_read_size).
_PARQUET_TAIL_READ = 64 * 1024
# The MP4 walk starts with this much: ftyp and either moov's header (a faststart file) or mdat's fit in it, and
# it is among the first bytes of the block the open fetches, so the walk goes on after one round trip, while
# the rest of that block is still arriving (64 KiB took ~3 round trips of slow start at 40 ms RTT).
_MP4_FIRST_READ = 4 * 1024


@dataclass
class Planner:
    """Base of the planners; it enforces the rules that make every plan end.

    - ``_need``: the bytes ``feed`` expects next, inside ``[0, file_size]``; ignored once ``done``.
    - ``_wanted``: set only by ``_finish``, and only with non-empty ranges of at most ``MAX_INDEX_BYTES``.
    - ``feeds``: feeds so far; ``done`` is set by the time it reaches ``MAX_FEEDS``.
    """

    file_size: int
    # The first read is fetched as exactly its pages rather than its whole blocks (the zip's end records; an
    # MP4's or Parquet file's readers read around their first range, so whole blocks serve them too).
    first_read_exact = False
    _need: ByteRange | None = None
    _wanted: list[ByteRange] = field(default_factory=list)
    done: bool = False
    feeds: int = 0

    def __post_init__(self) -> None:
        """Subclasses set ``_need``, the first bytes they look at."""

    def next_range(self) -> ByteRange | None:
        """Bytes to read and ``feed`` next; None when the plan is complete (or abandoned)."""
        return None if self.done else self._need

    def wanted(self) -> list[ByteRange]:
        """Ranges to prefetch: the index structures found."""
        return self._wanted

    def extents(self) -> list[ByteRange]:
        """Byte ranges a reader that starts one reads whole (a zip's members), in file order; none by default."""
        return []

    @final
    def feed(self, offset: int, data: bytes) -> None:
        """The bytes read at ``offset``; they should cover ``next_range()`` (more is fine, less ends the plan).

        Ignored once the plan is done."""
        need = self.next_range()
        if need is None:
            return
        self.feeds += 1
        skip = need.start - offset
        if skip < 0 or skip + need.length > len(data):
            self._finish()
        else:
            self._feed(need.start, data[skip : skip + need.length])
        if not self.done and self.feeds >= MAX_FEEDS:
            self._finish()

    def _feed(self, offset: int, data: bytes) -> None:
        """Parse exactly the bytes of ``_need`` (``offset`` is its start); set the next ``_need`` or ``_finish``."""
        raise NotImplementedError

    def _finish(self, *ranges: ByteRange) -> None:
        self._wanted.extend(r for r in ranges if 0 < r.length <= MAX_INDEX_BYTES)
        self.done = True


class ZipPlanner(Planner):
    """End of central directory (and its ZIP64 variant), then the central directory itself, whose entries say
    where each member's local header starts: ``extents()``.

    Three reads at most, each exactly what the format points to: the last ``_EOCD_FIRST_READ`` bytes (the end
    records of an archive without a comment, one round trip's worth on any connection); if the record is not
    there, the whole search range (a comment of up to 64 KiB); then the central directory, if at most
    ``_DIRECTORY_PARSE_MAX`` bytes (larger ones are prefetched unparsed). Measured at 40 ms RTT, 45 MiB zip:
    fetching from the last 1 MiB block boundary to EOF sent 837 KiB for a 200 KiB directory.
    """

    first_read_exact = True

    def __post_init__(self) -> None:
        self._need = ByteRange(max(0, self.file_size - _EOCD_FIRST_READ), self.file_size)
        self._directory: tuple[ByteRange, ByteRange] | None = None  # the directory and end records, once found
        self._extents: list[ByteRange] = []
        # The bytes the end records were found in, and where they start: the directory's end may be among them.
        self._tail_offset, self._tail = self.file_size, b""

    def extents(self) -> list[ByteRange]:
        """Each member's bytes, from its local header to the next member's (or the central directory), in file
        order; empty unless the directory was parsed."""
        return self._extents

    def _feed(self, offset: int, data: bytes) -> None:
        if self._directory is not None:
            directory, end = self._directory
            self._parse(directory, end, data + self._tail[: directory.stop - self._tail_offset])
            return
        found = _locate_directory(offset, data, self.file_size)
        if found is None:
            search = ByteRange(max(0, self.file_size - _EOCD_SEARCH), self.file_size)
            if offset > search.start:  # not in the last bytes: a comment; look through all it may span (once)
                self._need = search
            else:
                self._finish()
            return
        directory, end = found
        if directory.length > _DIRECTORY_PARSE_MAX:
            self._finish(directory, end)
            return
        if directory.start >= offset:  # all of it among the bytes read
            self._parse(directory, end, data[directory.start - offset : directory.stop - offset])
            return
        # Read only what is not among the bytes read already: the tool reading the directory waits for the
        # same last piece as this plan, so the members are known before it seeks to one.
        self._directory = found
        self._tail_offset, self._tail = offset, data
        self._need = ByteRange(directory.start, min(directory.stop, offset))

    def _parse(self, directory: ByteRange, end: ByteRange, data: bytes) -> None:
        self._extents = _member_extents(data, directory)
        self._finish(directory, end)


def _locate_directory(offset: int, data: bytes, file_size: int) -> tuple[ByteRange, ByteRange] | None:
    """The central directory and the end records, from bytes read at ``offset`` that end at EOF; None if the
    end-of-central-directory record (or the ZIP64 records it points to) is not among them."""
    position = data.rfind(_EOCD)
    if position < 0 or len(data) - position < 22:
        return None
    cd_size, cd_offset = struct.unpack_from("<II", data, position + 12)
    eocd = offset + position
    if 0xFFFFFFFF in (cd_size, cd_offset):
        locator = position - 20
        if locator < 0 or data[locator : locator + 4] != _ZIP64_LOCATOR:
            return None
        (record,) = struct.unpack_from("<Q", data, locator + 8)
        inside = offset <= record <= offset + len(data) - 56
        if not inside or data[record - offset : record - offset + 4] != _ZIP64_EOCD:
            return None
        cd_size, cd_offset = struct.unpack_from("<QQ", data, record - offset + 40)
    if cd_offset + cd_size > eocd:
        return None
    return ByteRange(cd_offset, cd_offset + cd_size), ByteRange(eocd, file_size)


def _member_extents(data: bytes, directory: ByteRange) -> list[ByteRange]:
    """Member extents from the central directory's bytes: each local header to the next (the last one to the
    directory). Empty if an entry does not parse: a damaged directory gives no hints rather than wrong ones."""
    starts: list[int] = []
    position = 0
    end = len(data)
    while position < end:
        if position + 46 > end or not data.startswith(_CENTRAL_ENTRY, position):
            return []
        compressed, uncompressed, name, extra, comment = _ENTRY_FIELDS.unpack_from(data, position + 20)
        header = _ENTRY_HEADER.unpack_from(data, position + 42)[0]
        if header == 0xFFFFFFFF:  # ZIP64: the offset is in the extra field, after the sizes that overflowed
            skip = 8 * ((uncompressed == 0xFFFFFFFF) + (compressed == 0xFFFFFFFF))
            header = _zip64_field(data[position + 46 + name : position + 46 + name + extra], skip)
            if header is None:
                return []
        starts.append(header)
        position += 46 + name + extra + comment
    if not starts:
        return []
    starts.sort()
    pairs = list(zip(starts, [*starts[1:], directory.start], strict=True))
    if not all(0 <= start < stop for start, stop in pairs):
        return []  # two entries at one header, or a header inside the directory: not a directory we trust
    return [ByteRange(start, stop) for start, stop in pairs]


def _zip64_field(extra: bytes, skip: int) -> int | None:
    """The 8 bytes at ``skip`` of the ZIP64 extended information field (id 1) among ``extra``'s fields."""
    position = 0
    while position + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, position)
        if kind == 1 and skip + 8 <= size and position + 4 + size <= len(extra):
            (value,) = struct.unpack_from("<Q", extra, position + 4 + skip)
            return int(value)
        position += 4 + size
    return None


class Mp4Planner(Planner):
    """Walk the top-level boxes from the start until the ``moov`` box is found, however far into the file.

    ``_box`` is where the next box header starts; it only grows, by at least one header (8 bytes) per feed.
    """

    _header = 16  # size (4), type (4), and a 64-bit size when the first says 1

    def __post_init__(self) -> None:
        self._need = ByteRange(0, min(self.file_size, _MP4_FIRST_READ))
        self._box = 0

    def _feed(self, offset: int, data: bytes) -> None:
        position = self._box
        while position < self.file_size:
            local = position - offset
            if self.file_size - position < 8:
                self._finish()  # trailing bytes too few for a box header: there is no moov
                return
            if local < 0 or local + 8 > len(data):
                break
            size, kind = struct.unpack_from(">I4s", data, local)
            header = 8
            if size == 1:
                if self.file_size - position < 16:
                    self._finish()  # a 64-bit size that would run past EOF
                    return
                if local + 16 > len(data):
                    break
                (size,) = struct.unpack_from(">Q", data, local + 8)
                header = 16
            elif size == 0:
                size = self.file_size - position
            if (position == 0 and kind != b"ftyp") or size < header:
                self._finish()  # not an ISO media file after all
                return
            if kind == b"moov":
                self._finish(ByteRange(position, min(position + size, self.file_size)))
                return
            position += size
        if position >= self.file_size or position == self._box:
            # Past EOF without a moov; or no header parsed from the bytes asked for, which would come again.
            self._finish()
            return
        self._box = position
        self._need = ByteRange(position, min(position + self._header, self.file_size))


class ParquetPlanner(Planner):
    """The footer: its length sits in the 4 bytes before the closing magic ``PAR1``.

    The first read is the last 64 KiB, not just the 8 bytes of length and magic: readers start with that
    speculative read (pyarrow's and parquet-rs's default footer read), which usually holds the whole footer,
    and a 64 KiB read at the end spans two blocks. Asked for first, both arrive in the one request the open
    starts, and the reader's own read joins it (measured at 40 ms RTT: two requests in a row before)."""

    def __post_init__(self) -> None:
        self._need = ByteRange(max(0, self.file_size - _PARQUET_TAIL_READ), self.file_size)

    def _feed(self, offset: int, data: bytes) -> None:
        if len(data) < 8 or data[-4:] != b"PAR1":
            self._finish()
            return
        (length,) = struct.unpack_from("<I", data, len(data) - 8)
        start = self.file_size - 8 - length
        self._finish(ByteRange(start, self.file_size) if start >= 4 else ByteRange(0, 0))


def planner_for(name: str, file_size: int) -> Planner | None:
    """A planner for a file whose name says it is a zip, MP4/MOV or Parquet file; None otherwise."""
    lower = name.lower()
    if file_size < 22:
        return None
    if lower.endswith(ZIP_SUFFIXES):
        return ZipPlanner(file_size)
    if lower.endswith(MP4_SUFFIXES):
        return Mp4Planner(file_size)
    if lower.endswith(PARQUET_SUFFIXES):
        return ParquetPlanner(file_size)
    return None

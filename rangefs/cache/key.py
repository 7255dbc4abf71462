"""PieceKey: the name of one cached piece of a remote object, carrying everything that defines its bytes.

A piece is the bytes ``start`` up to ``start + length`` of one object version (the object id hashes the URL,
every validator and the size). Naming pieces by their byte range rather than by a block index means that two
mounts with different block sizes on one cache directory can never read each other's pieces as their own
(0.1 keyed by block index alone, so block 2 of a 1 MiB mount was served as block 2 of a 4 MiB mount), and a
64 KiB chunk fetched alone for a small random read is just a shorter piece, not a negative index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FILE_NAME = re.compile(r"^([0-9]{1,19})\+([0-9]{1,19})$")


@dataclass(frozen=True, slots=True, order=True)
class PieceKey:
    object_id: str
    start: int
    length: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.length <= 0:
            raise ValueError(f"invalid piece {self.start}+{self.length}")

    @property
    def stop(self) -> int:
        return self.start + self.length

    @property
    def file_name(self) -> str:
        return f"{self.start}+{self.length}"

    @classmethod
    def from_file_name(cls, object_id: str, name: str) -> PieceKey | None:
        """The key a piece file's name stands for; None for anything else (temporary files, strays)."""
        match = _FILE_NAME.match(name)
        if match is None or int(match.group(2)) == 0:
            return None
        return cls(object_id, int(match.group(1)), int(match.group(2)))

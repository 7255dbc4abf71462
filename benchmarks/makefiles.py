"""Write the files of the tools scenario into a directory, with the test suite's generators (tests/media.py).

    python benchmarks/makefiles.py DIRECTORY [--no-video]

archive.zip (3,000 members), items.sqlite (100,000 rows of 1,000 bytes), files.tar (120 members of 1 MiB),
and, unless --no-video, plain.mp4 (3.5 min at 5 Mbit/s, moov at the end), fast.mp4 (its faststart copy) and
clip.webm, made with ffmpeg. Run by bench.py as a child process, so that its time is bounded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchlib.realtools import SQLITE_ROWS, TAR_MEMBERS, ZIP_MEMBERS
from benchlib.results import MiB

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--no-video", action="store_true", help="skip the MP4 and WebM files (no ffmpeg)")
    args = parser.parse_args()
    sys.path.append(str(REPO))
    from tests import media

    directory: Path = args.directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "archive.zip").write_bytes(media.make_zip(ZIP_MEMBERS))
    media.make_sqlite(directory / "items.sqlite", SQLITE_ROWS)
    (directory / "files.tar").write_bytes(media.make_tar(TAR_MEMBERS, MiB))
    if not args.no_video:
        media.make_video(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())

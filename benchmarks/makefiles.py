"""Write the files of the tools scenario into a directory, with the test suite's generators (tests/media.py).

    python benchmarks/makefiles.py DIRECTORY [--only archive.zip,items.sqlite,files.tar,video]

archive.zip (3,000 members), items.sqlite (100,000 rows of 1,000 bytes), files.tar (120 members of 1 MiB),
and "video": plain.mp4 (3.5 min at 5 Mbit/s, moov at the end), fast.mp4 (its faststart copy) and clip.webm,
made with ffmpeg. All of them by default. Run by bench.py as a child process, so that its time is bounded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))  # the test suite's generators (tests/media.py)

from benchlib.realtools import SQLITE_ROWS, TAR_MEMBERS, ZIP_MEMBERS  # noqa: E402
from benchlib.results import MiB  # noqa: E402

from tests import media  # noqa: E402

FILES = ("archive.zip", "items.sqlite", "files.tar", "video")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--only", default=",".join(FILES), help="comma-separated: " + ",".join(FILES))
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    if not wanted <= set(FILES):
        parser.error(f"--only: choose from {','.join(FILES)}")
    directory: Path = args.directory
    directory.mkdir(parents=True, exist_ok=True)
    if "archive.zip" in wanted:
        (directory / "archive.zip").write_bytes(media.make_zip(ZIP_MEMBERS))
    if "items.sqlite" in wanted:
        media.make_sqlite(directory / "items.sqlite", SQLITE_ROWS)
    if "files.tar" in wanted:
        (directory / "files.tar").write_bytes(media.make_tar(TAR_MEMBERS, MiB))
    if "video" in wanted:
        media.make_video(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())

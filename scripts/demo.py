"""The main job on an embedded default: serve sample files on loopback, mount them, use them, unmount.

Pass your own urls file to mount it instead: ``scripts/demo.sh my-urls.txt``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.origin import Origin, pattern_bytes

RANGEFS = [sys.executable, "-m", "rangefs"]


def sample_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for number in range(200):
            archive.writestr(f"reports/report-{number:03d}.txt", f"Report {number}: all is well.\n" * 3)
        archive.writestr("data/random.bin", pattern_bytes(20 * 1024 * 1024), compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def shell(title: str, command: list[str]) -> None:
    print(f"\n$ {' '.join(command)}    # {title}", flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rangefs-demo-") as workdir, Origin().running() as origin:
        work = Path(workdir)
        archive = sample_zip()
        zip_url = origin.add("/datasets/archive.zip", archive)
        text_url = origin.add("/docs/README.txt", b"Hello from a remote file, read through rangefs.\n" * 3)
        urls = Path(sys.argv[1]) if len(sys.argv) > 1 else work / "urls.txt"
        if len(sys.argv) == 1:
            urls.write_text(f"# sample files served on loopback\n{zip_url}\ndocs/README.txt {text_url}\n")
        mountpoint = work / "mnt"
        mountpoint.mkdir()
        print(f"urls file {urls}:\n{urls.read_text()}")
        shell("mount", [*RANGEFS, "mount", str(urls), str(mountpoint), "--cache-dir", str(work / "cache"),
                        "--log-file", str(work / "rangefs.log")])  # fmt: skip
        try:
            shell("list the mount", ["ls", "-lR", str(mountpoint)])
            shell("read a text file", ["cat", str(mountpoint / "docs" / "README.txt")])
            if (mountpoint / "archive.zip").exists():
                origin.clear_log()
                shell("list a remote zip", ["unzip", "-l", str(mountpoint / "archive.zip")])
                fetched = origin.bytes_sent_for("/datasets/archive.zip")
                print(f"\nunzip -l read {fetched:,} of the zip's {len(archive):,} bytes "
                      f"in {len(origin.requests_for('/datasets/archive.zip'))} range requests")  # fmt: skip
                shell("extract one member", ["unzip", "-p", str(mountpoint / "archive.zip"), "reports/report-007.txt"])
        finally:
            shell("unmount", [*RANGEFS, "umount", str(mountpoint)])
    return 0


if __name__ == "__main__":
    sys.exit(main())

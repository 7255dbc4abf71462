"""Real tools reading through a real mount: zip archives with python's zipfile and unzip."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile

import pytest

from tests.conftest import MountFactory
from tests.origin import Origin, pattern_bytes


def _make_zip(members: int) -> tuple[bytes, dict[str, bytes]]:
    contents = {f"folder/member-{n:04d}.txt": f"line {n}\n".encode() * (n % 50 + 1) for n in range(members)}
    contents["folder/random.bin"] = pattern_bytes(3 * 1024 * 1024, seed=3)  # stored: spans several blocks
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in contents.items():
            method = zipfile.ZIP_STORED if name.endswith(".bin") else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    return buffer.getvalue(), contents


@pytest.fixture
def zip_mount(origin: Origin, mount_factory: MountFactory):  # type: ignore[no-untyped-def]
    archive, contents = _make_zip(500)
    url = origin.add("/archives/data.zip", archive)
    mounted = mount_factory([f"sets/data.zip {url}"])
    return mounted.path / "sets" / "data.zip", contents


def test_python_zipfile_reads_every_member(zip_mount) -> None:  # type: ignore[no-untyped-def]
    path, contents = zip_mount
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(contents)
        for name, data in contents.items():
            assert archive.read(name) == data


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed (Debian package unzip)")
def test_unzip_lists_and_extracts(zip_mount) -> None:  # type: ignore[no-untyped-def]
    path, contents = zip_mount
    listing = subprocess.run(["unzip", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    assert f"{len(contents)} files" in listing
    for name in ("folder/member-0123.txt", "folder/random.bin"):
        extracted = subprocess.run(["unzip", "-p", str(path), name], capture_output=True, check=True).stdout
        assert extracted == contents[name]
    subprocess.run(["unzip", "-tq", str(path)], capture_output=True, check=True)  # every CRC checks out

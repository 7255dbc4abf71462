"""The fsspec filesystem: found through its entry point, chained URLs, info/cat_file/ls, pyarrow through it."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import rangefs
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024

fsspec = pytest.importorskip("fsspec")
from rangefs.library.filesystem import RangefsFileSystem  # noqa: E402 - needs fsspec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[RangefsFileSystem]:
    # revalidate_after=0: every info and open asks the origin (the test changes a file at once).
    with rangefs.Session(cache_dir=tmp_path / "cache", revalidate_after=0) as session:
        yield RangefsFileSystem(session=session, skip_instance_cache=True)


def _installed_metadata(site: Path) -> None:
    """What pip writes for rangefs's entry points, from pyproject.toml (the venv may hold an older install)."""
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    info = site / "rangefs-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rangefs\nVersion: 0.0.0\n")
    lines = [f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
             for group, points in entry_points.items()]  # fmt: skip
    (info / "entry_points.txt").write_text("\n".join(lines))


def test_fsspec_finds_rangefs_by_its_entry_point(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(300_000, seed=21)
    url = origin.add("/ep.bin", data)
    site = tmp_path / "site"
    _installed_metadata(site)
    code = textwrap.dedent(f"""
        import fsspec
        from rangefs.library.filesystem import RangefsFileSystem
        options = {{"cache_dir": {str(tmp_path / "cache")!r}}}
        fs = fsspec.filesystem("rangefs", **options)
        assert isinstance(fs, RangefsFileSystem), type(fs)
        assert fs.cat_file({url!r}, 10, 20) == {data[10:20]!r}
        with fsspec.open("rangefs::{url}", rangefs=options) as f:
            assert f.read() == fs.cat_file({url!r})
        with fsspec.open("rangefs://{url}", **options) as f:
            f.seek(299_990)
            assert f.read() == {data[299_990:]!r}
    """)
    environment = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=environment)


def test_info_ls_and_ranges(fs: RangefsFileSystem, origin: Origin) -> None:
    data = pattern_bytes(3 * MiB + 11, seed=22)
    url = origin.add("/f.bin", data)
    info = fs.info(url)
    assert info["size"] == len(data) and info["type"] == "file" and info["name"] == url
    assert fs.size(url) == len(data)
    assert fs.ls(url) == [info] and fs.ls(url, detail=False) == [url]
    assert fs.cat_file(url, 5, 10) == data[5:10]
    assert fs.cat_file(url, -7) == data[-7:]
    assert fs.cat_file(url, 2 * MiB, -1) == data[2 * MiB : -1]
    assert fs.cat_file(url, None, 4) == data[:4]
    assert fs.cat_file(url, len(data) + 5, len(data) + 9) == b""
    assert fs.cat(url) == data
    assert fs.exists(url) and not fs.exists(origin.url("/missing.bin"))
    with pytest.raises(FileNotFoundError):
        fs.info(origin.url("/missing.bin"))
    with pytest.raises(PermissionError):
        fs.open(url, "wb")
    with fs.open(url) as f:
        f.seek(MiB)
        assert f.read(100) == data[MiB : MiB + 100]
    assert fs.ukey(url) != fs.ukey(origin.add("/f.bin", pattern_bytes(10)))  # a new version, a new key


def test_pyarrow_through_fsspec_reads_one_column(
    fs: RangefsFileSystem, origin: Origin, parquet: tuple[bytes, int]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    data, chunk = parquet
    url = origin.add("/t.parquet", data)
    table = pq.read_table(url, filesystem=fs, columns=["c"])
    assert table.equals(pq.read_table(io.BytesIO(data), columns=["c"]))
    sent, requests = origin.bytes_sent_for("/t.parquet"), len(origin.requests_for("/t.parquet"))
    assert sent <= chunk + 2 * MiB + 64 * 1024, (sent, chunk, len(data))
    assert requests <= 4

"""The partial file of ``rangefs get``: its record says only what is durable, and one run writes it at a time."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from rangefs.download.output import FileSink
from rangefs.errors import DownloadError
from rangefs.ranges import ByteRange
from rangefs.remote import RemoteMetadata

METADATA = RemoteMetadata("http://127.0.0.1:9/f.bin", 2 * 1024 * 1024, etag='"v1"')


def test_after_a_failed_fsync_nothing_more_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = FileSink(tmp_path / "f.bin", force=False, digest=None)
    assert sink.open(METADATA) == []
    sink.write_at(0, b"a" * 1024)
    sink.checkpoint([ByteRange(0, 1024)])
    sink.write_at(1024, b"b" * 1024)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "writeback failed")

    # A disk that loses a writeback cannot be had on demand: the failure is injected at the fsync call.
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        sink.checkpoint([ByteRange(0, 2048)])
    monkeypatch.setattr(os, "fsync", real_fsync)  # Linux: the next fsync "succeeds", the pages being lost
    sink.abort([ByteRange(0, 2048)])
    record = json.loads(sink.record.read_text())
    assert record["done"] == [[0, 1024]]  # the last durable word, not the bytes the failed writeback held


def test_one_run_at_a_time_writes_a_partial_file(tmp_path: Path) -> None:
    first = FileSink(tmp_path / "f.bin", force=False, digest=None)
    first.open(METADATA)
    second = FileSink(tmp_path / "f.bin", force=False, digest=None)
    with pytest.raises(DownloadError, match="being written by another"):
        second.open(METADATA)
    first.abort([])
    assert second.open(METADATA) == []  # free again
    second.abort([])

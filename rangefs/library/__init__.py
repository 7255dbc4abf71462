"""Remote files without a mount: ``rangefs.open``, ``rangefs.Session``, ``rangefs.aopen`` and the fsspec
filesystem (``filesystem.py``), on the engine, readahead and disk cache a mount uses. Imports no pyfuse3."""

from rangefs.library.asession import AsyncRemoteFile, AsyncSession, aopen
from rangefs.library.file import RawRemoteFile, RemoteFile
from rangefs.library.session import Session, open, shared_session

__all__ = [
    "AsyncRemoteFile",
    "AsyncSession",
    "RawRemoteFile",
    "RemoteFile",
    "Session",
    "aopen",
    "open",
    "shared_session",
]

"""rangefs: remote files over HTTP range requests, as a read-only FUSE filesystem and as Python file objects.

    with rangefs.open("https://example.org/data.zip") as f:   # seekable, buffered, thread-safe
        zipfile.ZipFile(f).namelist()

``rangefs.Session`` shares one engine, connection pool and cache across files; ``rangefs.aopen`` is the
trio variant. Importing rangefs does not import pyfuse3: the FUSE layer is loaded only by ``rangefs mount``.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rangefs.library import AsyncRemoteFile, AsyncSession, RemoteFile, Session, aopen, open

__all__ = ["AsyncRemoteFile", "AsyncSession", "RemoteFile", "Session", "__version__", "aopen", "open"]


def __getattr__(name: str) -> Any:
    # The library is imported on first use (PEP 562): `rangefs mount`, which only starts the daemon, and every
    # other command importing this package must not pay for trio, httpx and the engine (~0.3 s).
    if name in __all__:
        import rangefs.library

        return getattr(rangefs.library, name)
    raise AttributeError(f"module 'rangefs' has no attribute {name!r}")

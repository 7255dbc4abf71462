"""rangefs: remote files over HTTP range requests, as a read-only FUSE filesystem and as Python file objects.

    with rangefs.open("https://example.org/data.zip") as f:   # seekable, buffered, thread-safe
        zipfile.ZipFile(f).namelist()

``rangefs.Session`` shares one engine, connection pool and cache across files; ``rangefs.aopen`` is the
trio variant. Importing rangefs does not import pyfuse3: the FUSE layer is loaded only by ``rangefs mount``.
"""

__version__ = "0.1.0"

# The version first: the package's modules may read it.
from rangefs.library import (
    AsyncRemoteFile,
    AsyncSession,
    RemoteFile,
    Session,
    aopen,
    open,
)

__all__ = ["AsyncRemoteFile", "AsyncSession", "RemoteFile", "Session", "__version__", "aopen", "open"]

"""The library's one translation point: a RangefsError becomes the OSError a file object's user expects.

Python code that reads files catches OSError (zipfile, tarfile, pyarrow, fsspec's ``exists``, which needs
FileNotFoundError for a missing file). As ``fuse_ops`` maps errors to errno values for the kernel, this maps
them to OSError subclasses for Python, keeping the rangefs error as ``__cause__``:

- 404, 410: FileNotFoundError (ENOENT)
- 401, 403: PermissionError (EACCES)
- the file changed at the origin under an open file: OSError(ESTALE)
- anything else: OSError(EIO)
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from rangefs.errors import RangefsError, RemoteChanged, RemoteError, RemoteStatusError


def os_error(error: RangefsError) -> OSError:
    """The OSError for ``error``; its filename is the URL where there is one."""
    url = error.url if isinstance(error, RemoteError) else None
    message = error.cause if isinstance(error, RemoteError) else str(error)
    if isinstance(error, RemoteStatusError) and error.status in (404, 410):
        return FileNotFoundError(errno.ENOENT, message, url)
    if isinstance(error, RemoteStatusError) and error.status in (401, 403):
        return PermissionError(errno.EACCES, message, url)
    if isinstance(error, RemoteChanged):
        return OSError(errno.ESTALE, message, url)
    return OSError(errno.EIO, message, url)


@contextmanager
def translated() -> Iterator[None]:
    """Raise what the block raises, but a RangefsError as its OSError."""
    try:
        yield
    except RangefsError as error:
        raise os_error(error) from error

"""The one exception hierarchy of rangefs.

    RangefsError
    ├── FetchAborted          the fetch a reader joined was cancelled (its prefetch was abandoned, or the
    │                         mount is stopping); the reader fetches for itself
    ├── UsageError            the user asked for something impossible (exit code 2 or 1, one line)
    │   ├── ConfigError       urls.txt problems, each as FILE:LINE: message
    │   ├── MountError        mountpoint missing/busy/not empty, FUSE unavailable
    │   └── DownloadError     `rangefs get` cannot use or write its output, or the digest differs
    └── RemoteError           a remote file could not be read; always names the URL
        ├── RemoteUnreachable connection refused/reset, DNS failure, timeout
        ├── RemoteStatusError the server answered with an unexpected status (404, 500, ...)
        ├── InvalidResponse   the answer broke the range protocol (wrong Content-Range, short body, ...)
        │   └── RangesUnsupported  the server sent the whole file to a range request
        ├── RemoteChanged     the file changed on the server (validator differs, 200 to If-Range)
        └── CredentialError   a credentials command failed, or the server refused what it just gave

Only ``fuse_ops`` maps these to errno values and only ``cli`` maps them to exit codes.
"""

from __future__ import annotations


class RangefsError(Exception):
    """Base of every error rangefs raises on purpose."""


class FetchAborted(RangefsError):
    """The fetch a reader waited for was cancelled before it brought the bytes."""


class UsageError(RangefsError):
    """A mistake by the user: reported as one line, without a traceback."""

    exit_code = 1


class ConfigError(UsageError):
    """One or more problems in a urls file; ``problems`` holds ``FILE:LINE: message`` lines."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MountError(UsageError):
    """The filesystem cannot be mounted where or how the user asked."""


class DownloadError(UsageError):
    """``rangefs get`` cannot use or write an output, or what it downloaded has another digest."""


class RemoteError(RangefsError):
    """Reading a remote file failed; the message names the URL and the cause."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"{url}: {cause}")
        self.url = url
        self.cause = cause


class RemoteUnreachable(RemoteError):
    """No usable answer arrived: connection failure or timeout."""


class RemoteStatusError(RemoteError):
    """The server answered with a status that is not the one the request needs."""

    def __init__(self, url: str, status: int, cause: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(url, cause or f"HTTP status {status}")
        self.status = status
        self.retry_after = retry_after


class InvalidResponse(RemoteError):
    """The answer cannot be trusted as the requested bytes; ``transient`` if trying again may help."""

    def __init__(self, url: str, cause: str, *, transient: bool = False) -> None:
        super().__init__(url, cause)
        self.transient = transient


class RangesUnsupported(InvalidResponse):
    """The server answered a range request with the whole (unchanged) file: it does not do ranges."""


class RemoteChanged(RemoteError):
    """The remote file is no longer the version whose bytes we hold."""


class CredentialError(RemoteError):
    """A ``header-command``/``url-command`` failed or gave something unusable, or the server answered 401/403
    to the credentials it had just produced; the cause names the command and its ``FILE:LINE``. Never
    EACCES: refreshing did not help, so the reader gets EIO and the log says why."""

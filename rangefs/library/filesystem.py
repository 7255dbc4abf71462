"""RangefsFileSystem: an fsspec filesystem over rangefs sessions, so fsspec users read through its cache.

Registered under the protocol ``rangefs`` by the ``fsspec.specs`` entry point (pyproject.toml), so with rangefs
installed::

    fs = fsspec.filesystem("rangefs", cache_dir="/data/cache")
    pq.read_table("https://example.org/t.parquet", filesystem=fs, columns=["a"])
    fsspec.open("rangefs::https://example.org/t.parquet")       # chained over an http(s) URL
    pd.read_parquet("rangefs://https://example.org/t.parquet")  # or the URL after rangefs://

Paths are the files' http(s) URLs. Only what fsspec's spec needs for reading is implemented (``_open``,
``info``, ``ls`` of a file, ``cat_file`` with ranges); fsspec derives the rest (``size``, ``exists``,
``cat``, ``open``, ``read_bytes``, ...). There are no directories: HTTP has no listing to trust, so ``ls`` of
a URL lists that file. ``rangefs::URL`` chaining parses the URL with fsspec's own http filesystem, which needs
aiohttp installed; ``rangefs://URL`` does not.

Files come from a ``rangefs.Session``: the one given, else the process's shared session for the options
(``cache_dir``, ``cache_size``, ``block_size``, ``connections``, ...), closed at exit.
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from rangefs.library.options import HeadersArg
from rangefs.library.session import Session, shared_session

try:  # fsspec >= 2025.10 marks filesystems that wrap another; older ones pass the URL as ``fo``.
    from fsspec.implementations.chained import ChainedFileSystem as _Base
except ImportError:  # pragma: no cover - older fsspec
    _Base = AbstractFileSystem

_SCHEMES = ("http://", "https://")
# Options fsspec itself takes (instance caching), not the session's.
_FSSPEC_OPTIONS = ("skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths")


class RangefsFileSystem(_Base):  # type: ignore[misc]
    """Read-only fsspec filesystem whose paths are http(s) URLs, read through a rangefs Session."""

    protocol = ("rangefs",)
    root_marker = ""
    cachable = True

    def __init__(
        self,
        *,
        headers: HeadersArg = None,
        session: Session | None = None,
        fo: str | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """``headers`` go with every request (also taken from ``target_options["headers"]`` or
        ``target_options["client_kwargs"]["headers"]`` when chained over fsspec's http options); ``fo`` is the
        URL fsspec passes when chaining; other options configure the shared session, as for rangefs.open."""
        fsspec_options = {key: options.pop(key) for key in _FSSPEC_OPTIONS if key in options}
        super().__init__(**fsspec_options)
        target = target_options or {}
        chained_headers = target.get("headers") or target.get("client_kwargs", {}).get("headers")
        self.headers = headers if headers is not None else chained_headers
        self._fo = fo
        self._session = session if session is not None else shared_session(**options)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(path)
        for prefix in ("rangefs://", "rangefs::"):
            text = text.removeprefix(prefix)
        return text

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def _url(self, path: str) -> str:
        url = self._strip_protocol(path)
        if not url and self._fo:
            url = self._fo
        if not url.startswith(_SCHEMES):
            raise FileNotFoundError(f"{path!r}: rangefs paths are http:// or https:// URLs")
        return str(url)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, **kwargs: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"rangefs is read-only: cannot open {path!r} with mode {mode!r}")
        return self._session.open(self._url(path), headers=self.headers)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self._url(path)
        metadata = self._session.metadata(url, headers=self.headers)
        return {
            "name": url,
            "size": metadata.size,
            "type": "file",
            "ETag": metadata.etag,
            "LastModified": metadata.last_modified,
        }

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entry = self.info(path)
        return [entry] if detail else [entry["name"]]

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """The file's bytes, or ``start`` to ``end`` of them (negative: from the end, as Python slices)."""
        with self._session.open(self._url(path), headers=self.headers) as file:
            size = file.size  # of the version just opened: negative offsets count back from its end
            lo = 0 if start is None else start if start >= 0 else max(0, size + start)
            hi = size if end is None else end if end >= 0 else max(0, size + end)
            return file.pread(max(0, hi - lo), lo)

    def ukey(self, path: str) -> str:
        """Changes when the file does: the version's validators and size."""
        info = self.info(path)
        return f"{info['name']}\0{info['ETag']}\0{info['LastModified']}\0{info['size']}"

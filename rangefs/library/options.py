"""Keyword options of the Python API, turned into the MountSettings a mount would use.

The API takes the same knobs as ``rangefs mount`` and the same defaults (MountSettings is their one source),
so a file read through ``rangefs.open`` and through a mount of the same cache directory shares blocks (same
keys, same block size) and the directory's size limit.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from rangefs.config import RESERVED_HEADERS, MountSettings, parse_size, url_problem
from rangefs.errors import UsageError

Headers = tuple[tuple[str, str], ...]
HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None
Size = int | str


def _size(value: Size) -> int:
    return value if isinstance(value, int) else parse_size(value)


def settings_from(
    *,
    cache_dir: str | Path | None = None,
    cache_size: Size | None = None,
    block_size: Size | None = None,
    connections: int | None = None,
    max_readahead: Size | None = None,
    max_inflight: Size | None = None,
    timeout: float | None = None,
    metadata_ttl: float | None = None,
    revalidate_after: float | None = None,
    format_prefetch: bool | None = None,
    ca_bundle: str | Path | None = None,
    http2: bool | None = None,
    fetch_workers: int = 0,
) -> MountSettings:
    """MountSettings with the given options, the mount's defaults elsewhere.

    Sizes are bytes or strings such as ``"64M"``; ``cache_size=0`` removes the limit (as ``--cache-size 0``).
    Unlike a mount, the API starts no fetch worker process unless ``fetch_workers`` asks for some.
    Raises ValueError for what the mount would refuse (a block size that is not a multiple of 4K, ...)."""
    changes: dict[str, object] = {"fetch_workers": fetch_workers}
    if cache_dir is not None:
        changes["cache_dir"] = Path(cache_dir).expanduser().absolute()
    if cache_size is not None:
        changes["cache_size"] = _size(cache_size) or None
    for name, size in (("block_size", block_size), ("max_readahead", max_readahead), ("max_inflight", max_inflight)):
        if size is not None:
            changes[name] = _size(size)
    for name, value in (
        ("connections", connections),
        ("timeout", timeout),
        ("metadata_ttl", metadata_ttl),
        ("revalidate_after", revalidate_after),
        ("format_prefetch", format_prefetch),
        ("http2", http2),
    ):
        if value is not None:
            changes[name] = value
    if ca_bundle is not None:
        changes["ca_bundle"] = Path(ca_bundle).expanduser().absolute()
    try:
        return dataclasses.replace(MountSettings(), **changes)  # type: ignore[arg-type]
    except UsageError as error:
        # The mount's messages name its options (--block-size); the API's are keyword arguments (block_size).
        raise ValueError(re.sub(r"--([a-z-]+)", lambda m: m.group(1).replace("-", "_"), str(error))) from None


def headers_from(headers: HeadersArg) -> Headers:
    """Request headers as the engine takes them; refuses the ones rangefs sets itself (Range, ...)."""
    if headers is None:
        return ()
    pairs = list(headers.items()) if isinstance(headers, Mapping) else [(name, value) for name, value in headers]
    for name, value in pairs:
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by rangefs itself and cannot be given")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} value contains a line break")
    return tuple((str(name), str(value)) for name, value in pairs)


def check_url(url: str) -> str:
    """``url`` if rangefs can read it, else ValueError saying why."""
    problem = url_problem(url)
    if problem:
        raise ValueError(problem)
    return url

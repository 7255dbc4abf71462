"""Parse a urls file into entries.

Format (one entry per line, ``#`` starts a comment)::

    https://example.org/data/archive.zip          # file named archive.zip
    videos/talk.mp4 https://example.org/v?id=7    # explicit path, creates the directory videos/
        header = Authorization: Bearer ${TOKEN}   # indented lines are options of the entry above
        size = 104857600                          # expected size in bytes

Every problem is collected, not just the first, and reported as ``FILE:LINE: message`` so a user can fix the
whole file in one pass. ``${NAME}`` is expanded from the environment so secrets stay out of the file.
Pure: no I/O besides reading the file in :func:`read_urls_file`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, unquote, urlsplit

from rangefs.errors import ConfigError

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers rangefs sets itself on every request; letting a user override them would break the range protocol.
RESERVED_HEADERS = frozenset({"range", "if-range", "accept-encoding", "host", "content-length"})
_MAX_NAME_BYTES = 255
_UNSAFE_COMPONENTS = frozenset({"", ".", ".."})


@dataclass(frozen=True)
class Entry:
    """One remote file: where it appears in the mount and how to fetch it."""

    path: PurePosixPath
    url: str
    line: int
    headers: tuple[tuple[str, str], ...] = ()
    expected_size: int | None = None


@dataclass
class _Draft:
    path: PurePosixPath
    url: str
    line: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    expected_size: int | None = None

    def freeze(self) -> Entry:
        return Entry(self.path, self.url, self.line, tuple(self.headers), self.expected_size)


def read_urls_file(path: str | Path, environ: Mapping[str, str]) -> list[Entry]:
    """Read and parse a urls file; unreadable files are a ConfigError too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{path}: cannot read urls file: {error}"]) from None
    return parse_urls(text, str(path), environ)


def parse_urls(text: str, filename: str, environ: Mapping[str, str]) -> list[Entry]:
    """Parse the text of a urls file; raises ConfigError listing every bad line."""
    problems: list[str] = []
    drafts: list[_Draft] = []
    current: _Draft | None = None
    current_ok = False  # options under a rejected entry are skipped silently: its line is already reported

    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        where = f"{filename}:{number}"
        if line[0] in " \t":
            if current is None:
                problems.append(f"{where}: indented option without an entry above it")
            elif current_ok:
                problem = _apply_option(current, line.strip(), environ)
                if problem:
                    problems.append(f"{where}: {problem}")
            continue
        current, problem = _parse_entry(line.strip(), number)
        current_ok = problem is None
        if problem:
            problems.append(f"{where}: {problem}")
        elif current is not None:
            drafts.append(current)

    problems.extend(_layout_problems(drafts, filename))
    if problems:
        raise ConfigError(problems)
    if not drafts:
        raise ConfigError([f"{filename}: no URLs found; write one URL per line"])
    return [draft.freeze() for draft in drafts]


def _strip_comment(line: str) -> str:
    # A '#' starts a comment only at the line start or after white space: URLs keep their fragments.
    match = re.search(r"(^|\s)#", line)
    return line[: match.start()] if match else line


def _parse_entry(line: str, number: int) -> tuple[_Draft | None, str | None]:
    fields = line.split()
    if len(fields) > 2:
        return None, "expected 'URL' or 'PATH URL' (spaces in URLs must be written as %20)"
    url = fields[-1]
    parts, problem = _split_url(url)
    if parts is None:
        return None, problem
    if len(fields) == 2:
        path, problem = _safe_path(fields[0])
    else:
        path, problem = _name_from_parts(url, parts)
    if problem or path is None:
        return None, problem
    return _Draft(path, url, number), None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be read by rangefs (not http(s), no host, a bad port), or None."""
    return _split_url(url)[1]


def _split_url(url: str) -> tuple[SplitResult | None, str | None]:
    """The URL's parts, or why rangefs cannot read it (split once: 100,000 lines parse in about a second)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as error:
        return None, f"invalid URL {url!r}: {error}"
    if parts.scheme not in ("http", "https"):
        return None, f"invalid URL {url!r}: only http:// and https:// URLs can be mounted"
    if not parts.hostname:
        return None, f"invalid URL {url!r}: no host name"
    return parts, None


def name_from_url(url: str) -> tuple[PurePosixPath | None, str | None]:
    """The file name a bare URL gets (its last path segment, percent-decoded, made safe), or the problem."""
    return _name_from_parts(url, urlsplit(url))


def _name_from_parts(url: str, parts: SplitResult) -> tuple[PurePosixPath | None, str | None]:
    segment = unquote(parts.path.rstrip("/").rpartition("/")[2])
    name = segment.replace("/", "_").replace("\0", "_").strip()
    if name in ("", ".", ".."):
        return None, f"cannot name a file after {url!r}; write a path before the URL, e.g. 'data.bin {url}'"
    return _safe_path(name)


def _safe_path(text: str) -> tuple[PurePosixPath | None, str | None]:
    if text.startswith("/"):
        return None, f"path {text!r} is absolute; paths are relative to the mountpoint"
    parts = text.split("/")
    if _UNSAFE_COMPONENTS.intersection(parts):
        return None, f"path {text!r} is unsafe: no empty, '.' or '..' components allowed"
    if "\0" in text:
        return None, f"path {text!r} contains a NUL byte"
    if len(text) > _MAX_NAME_BYTES // 4 and any(len(part.encode()) > _MAX_NAME_BYTES for part in parts):
        return None, f"path {text!r} has a component longer than {_MAX_NAME_BYTES} bytes"
    return PurePosixPath(text), None


def _apply_option(draft: _Draft, text: str, environ: Mapping[str, str]) -> str | None:
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep:
        return f"expected 'option = value' under the entry, got {text!r}"
    value, problem = _expand(value, environ)
    if problem:
        return problem
    if key == "header":
        name, colon, header_value = value.partition(":")
        name, header_value = name.strip(), header_value.strip()
        if not colon or not _HEADER_NAME.match(name):
            return f"expected 'header = Name: value', got {text!r}"
        if name.lower() in RESERVED_HEADERS:
            return f"header {name!r} is set by rangefs itself and cannot be configured"
        if "\r" in header_value or "\n" in header_value:
            return f"header {name!r} value contains a line break"
        draft.headers.append((name, header_value))
        return None
    if key == "size":
        if not value.isdigit():
            return f"size must be a whole number of bytes, got {value!r}"
        draft.expected_size = int(value)
        return None
    return f"unknown option {key!r}; known options: header, size"


def _expand(value: str, environ: Mapping[str, str]) -> tuple[str, str | None]:
    missing = [name for name in _ENV_REFERENCE.findall(value) if name not in environ]
    if missing:
        return value, f"environment variable {missing[0]} is not set (used as ${{{missing[0]}}})"
    return _ENV_REFERENCE.sub(lambda match: environ[match.group(1)], value), None


def _layout_problems(drafts: list[_Draft], filename: str) -> list[str]:
    """Duplicate paths, and a path that is both a file and a directory."""
    problems = []
    files: dict[PurePosixPath, int] = {}
    for draft in drafts:
        if draft.path in files:
            problems.append(
                f"{filename}:{draft.line}: duplicate path '{draft.path}' (first used on line {files[draft.path]});"
                " write a different path before the URL"
            )
        else:
            files[draft.path] = draft.line
    names = {str(path): line for path, line in files.items()}
    for draft in drafts:
        text = str(draft.path)
        # Parents by string: PurePosixPath.parents cost most of a 100,000-line list's parse.
        for cut in (index for index, char in enumerate(text) if char == "/"):
            if text[:cut] in names:
                parent = PurePosixPath(text[:cut])
                problems.append(
                    f"{filename}:{draft.line}: '{draft.path}' needs '{parent}' to be a directory,"
                    f" but line {files[parent]} makes it a file"
                )
    return problems

"""What the user asked for: the urls file (``urls``) and the mount settings (``settings``)."""

from rangefs.config.settings import MountSettings, default_cache_dir, parse_size
from rangefs.config.urls import (
    RESERVED_HEADERS,
    Command,
    Entry,
    name_from_url,
    parse_header,
    parse_urls,
    read_urls_file,
    url_problem,
)

__all__ = [
    "RESERVED_HEADERS",
    "Command",
    "Entry",
    "MountSettings",
    "default_cache_dir",
    "name_from_url",
    "parse_header",
    "parse_size",
    "parse_urls",
    "read_urls_file",
    "url_problem",
]

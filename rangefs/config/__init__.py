"""What the user asked for: the urls file (``urls``) and the mount settings (``settings``)."""

from rangefs.config.settings import MountSettings, default_cache_dir, parse_size
from rangefs.config.urls import RESERVED_HEADERS, Entry, name_from_url, parse_urls, read_urls_file, url_problem

__all__ = [
    "RESERVED_HEADERS",
    "Entry",
    "MountSettings",
    "default_cache_dir",
    "name_from_url",
    "parse_size",
    "parse_urls",
    "read_urls_file",
    "url_problem",
]

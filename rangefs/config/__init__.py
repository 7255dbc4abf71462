"""What the user asked for: the urls file (``urls``) and the mount settings (``settings``)."""

from rangefs.config.settings import MountSettings, default_cache_dir, parse_size
from rangefs.config.urls import Entry, parse_urls, read_urls_file

__all__ = ["Entry", "MountSettings", "default_cache_dir", "parse_size", "parse_urls", "read_urls_file"]

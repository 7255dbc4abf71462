"""Talking to HTTP servers. The only package that imports httpx."""

from rangefs.remote.client import RemoteClient
from rangefs.remote.metadata import RemoteMetadata

__all__ = ["RemoteClient", "RemoteMetadata"]

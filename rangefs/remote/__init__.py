"""Talking to HTTP servers. The only package that imports httpx."""

from rangefs.remote.breaker import HostBreaker
from rangefs.remote.client import ClientStatistics, FetchStopped, RemoteClient
from rangefs.remote.credentials import Credentials
from rangefs.remote.metadata import RemoteMetadata

__all__ = ["ClientStatistics", "Credentials", "FetchStopped", "HostBreaker", "RemoteClient", "RemoteMetadata"]

"""The on-disk block cache. Knows bytes keyed by (object id, block index); knows nothing of HTTP."""

from rangefs.cache.store import BlockCache, CacheStatistics

__all__ = ["BlockCache", "CacheStatistics"]

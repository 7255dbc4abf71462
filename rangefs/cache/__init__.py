"""The on-disk block cache. Knows bytes keyed by (object id, block index); knows nothing of HTTP."""

from rangefs.cache.blockfile import CHUNK_SIZE
from rangefs.cache.store import BlockCache, CacheStatistics, chunk_key

__all__ = ["CHUNK_SIZE", "BlockCache", "CacheStatistics", "chunk_key"]

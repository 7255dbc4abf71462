"""The on-disk block cache. Knows bytes keyed by PieceKey (object version and byte range); knows nothing of HTTP."""

from rangefs.cache.blockfile import CHUNK_SIZE
from rangefs.cache.key import PieceKey
from rangefs.cache.store import BlockCache, CacheStatistics

__all__ = ["CHUNK_SIZE", "BlockCache", "CacheStatistics", "PieceKey"]

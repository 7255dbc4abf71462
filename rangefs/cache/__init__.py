"""The on-disk block cache. Knows bytes keyed by PieceKey (object version and byte range); knows nothing of HTTP."""

from rangefs.cache.blockfile import CHUNK_SIZE
from rangefs.cache.claims import CLAIM_LEASE, Owner, PieceState
from rangefs.cache.key import PieceKey
from rangefs.cache.store import BlockCache, CacheStatistics

__all__ = ["CHUNK_SIZE", "CLAIM_LEASE", "BlockCache", "CacheStatistics", "Owner", "PieceKey", "PieceState"]

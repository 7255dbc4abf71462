"""Cache-or-fetch for byte ranges of remote files: single flight per piece, a memory tier over the disk cache,
sparse chunk reads, whole-file streams for servers without ranges, and cache writes with backpressure."""

from rangefs.blocks.flight import Pending
from rangefs.blocks.store import BlockStore, RangeSource, Run, StoreStatistics

__all__ = ["BlockStore", "Pending", "RangeSource", "Run", "StoreStatistics"]

"""Readahead: a pure access-pattern policy (``pattern``) and the prefetcher that carries it out."""

from rangefs.readahead.pattern import AccessPattern, Prefetch, ReadaheadConfig

__all__ = ["AccessPattern", "Prefetch", "ReadaheadConfig"]

"""rangefs: remote files over HTTP range requests, as a read-only FUSE filesystem."""

__version__ = "0.1.0"

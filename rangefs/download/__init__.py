"""``rangefs get``: downloads through the engine (transfer.py): into files in segments over parallel connections
(segmented.py, segments.py), written under a partial name until verified, or to stdout in order through the
readahead's parts and the disk cache (output.py), with progress (progress.py).

Files are downloaded ``jobs`` at a time in one AsyncSession, so they share the connections per host (and
their AIMD limits) and the byte budget; stdout takes the URLs one after another, in the order given.

The package itself imports nothing: ``rangefs`` commands other than ``get`` only define its arguments
(``arguments.py``) and must not load the engine; the jobs and their runner are in ``jobs.py``.
"""

"""``--metrics-listen``: the engine's counters in the Prometheus text format, served from the trio loop.

A custom collector reads the counters at each scrape (nothing is copied as it happens); a tiny HTTP/1.0
handler answers ``GET /metrics`` on a trio socket and closes. No thread: prometheus_client's own server runs
one, and the counters are only consistent read from the loop that changes them.

Totals only, no per-file labels: a mount may list 100,000 files, and a series per file and counter would be
millions of series in the scraping Prometheus; labelling just the busiest N would make series appear and
vanish as the ranking changes, which breaks ``rate()``. The busiest files are in ``rangefs stats``.

Bounded: at most ``_CONNECTIONS`` scrapes at once (more are closed unanswered), each given
``_REQUEST_TIMEOUT`` seconds to send its request head of at most ``_HEAD_LIMIT`` bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rangefs.config.listen import ListenAddress
from rangefs.engine import FileEngine
from rangefs.errors import MountError

log = logging.getLogger(__name__)

_CONNECTIONS = 4  # a Prometheus server or two, and someone's curl
_REQUEST_TIMEOUT = 10.0  # Prometheus's default scrape timeout
_HEAD_LIMIT = 8 * 1024


class EngineCollector(Collector):
    """Reads a FileEngine's counters at each collection."""

    def __init__(self, engine: FileEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        traffic, http, cache = engine.traffic, engine.client.statistics(), engine.store.cache.statistics()
        counters = (
            ("reads", "Reads by readers of the mount's files", traffic.reads),
            ("read_errors", "Reads that failed (the reader got EIO or EACCES)", traffic.read_errors),
            ("bytes_served", "Bytes returned to readers", traffic.bytes_served),
            ("cache_hit_bytes", "Bytes served from memory or the disk cache, without waiting", traffic.bytes_hit),
            ("bytes_fetched", "Body bytes received from origins", traffic.bytes_fetched),
            ("requests", "Range and whole-file GET requests sent (retries and resumes included)", traffic.requests),
            ("retries", "Request attempts tried again after a backoff", traffic.retries),
            ("request_errors", "Request attempts that failed, retried or not", traffic.errors),
            ("throttled", "Answers 429 or 503 (connections per host were halved)", http.throttled),
            ("requests_refused", "Requests failed without sending: their host was known down", http.requests_refused),
            ("disk_cache_hits", "Pieces read from the disk cache", cache.hits),
            ("disk_cache_misses", "Pieces looked for in the disk cache and not found (or corrupt)", cache.misses),
            ("disk_cache_written_bytes", "Bytes written to the disk cache", cache.bytes_written),
            ("disk_cache_evicted_pieces", "Pieces evicted from the disk cache by its size limit", cache.blocks_evicted),
            ("disk_cache_write_failures", "Writes to the disk cache that failed", cache.write_failures),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"rangefs_{name}", documentation, value=value)
        failed = sum(file.failure is not None for file in engine.files.values())
        gauges = (
            ("bytes_in_flight", "Bytes requested from origins and not received yet", traffic.bytes_in_flight),
            ("open_handles", "Open file handles", engine.open_handles),
            ("files", "Files in the mount", len(engine.files)),
            ("files_failed", "Files whose last probe failed", failed),
            ("hosts_down", "Hosts known down right now", http.hosts_down),
            ("disk_cache_usage_bytes", "Bytes the disk cache directory holds (all its users)", cache.usage_bytes),
            ("disk_cache_limit_bytes", "Size limit of the disk cache directory (0: none)", cache.limit_bytes),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(f"rangefs_{name}", documentation, value=value)
        if engine.prefetcher is not None:
            budget = engine.prefetcher.budget
            yield GaugeMetricFamily("rangefs_readahead_bytes_in_use", "Readahead budget in use", value=budget.in_use)


def registry_for(engine: FileEngine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry


async def serve(
    engine: FileEngine, address: ListenAddress, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on ``address`` and answer scrapes until cancelled; reports the port listened on when ready."""
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as error:
        raise MountError(f"cannot listen for metrics on {address}: {error.strerror or error}") from None
    port = int(listeners[0].socket.getsockname()[1])
    bound = ListenAddress(address.host, port)
    if not address.is_loopback:
        log.warning("metrics on %s are reachable from other machines, without authentication", bound)
    log.info("metrics at http://%s/metrics", bound)
    registry = registry_for(engine)
    limiter = trio.CapacityLimiter(_CONNECTIONS)
    task_status.started(port)
    await trio.serve_listeners(partial(_answer, registry, limiter), listeners)


async def _answer(registry: CollectorRegistry, limiter: trio.CapacityLimiter, stream: trio.SocketStream) -> None:
    """One scrape; whatever goes wrong ends this connection, never the mount."""
    async with stream:
        if limiter.available_tokens < 1:
            return  # too many at once: closed unanswered (no await since the check, so the token is there)
        async with limiter:
            try:
                with trio.move_on_after(_REQUEST_TIMEOUT):
                    head = await _read_head(stream)
                    if head is not None:
                        await stream.send_all(_response(registry, head))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                log.debug("metrics connection failed: %r", error)
            except Exception:
                log.warning("cannot answer a metrics request", exc_info=True)


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request line and headers, or None if the client sent too much or closed first."""
    received = b""
    while b"\r\n\r\n" not in received and b"\n\n" not in received:
        if len(received) > _HEAD_LIMIT:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        received += chunk
    return received


def _response(registry: CollectorRegistry, head: bytes) -> bytes:
    method, _, rest = head.split(b"\n", 1)[0].strip().partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if method != b"GET":
        return _http(405, b"only GET\n", b"text/plain", extra=b"Allow: GET\r\n")
    if path != b"/metrics":
        return _http(404, b"metrics are at /metrics\n", b"text/plain")
    try:
        body = generate_latest(registry)
    except Exception:
        log.warning("cannot collect metrics", exc_info=True)
        return _http(500, b"cannot collect metrics; see the rangefs log\n", b"text/plain")
    return _http(200, body, CONTENT_TYPE_LATEST.encode())


def _http(status: int, body: bytes, content_type: bytes, extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 500: b"Internal Server Error"}[status]
    head = b"HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n" % (
        status,
        reason,
        content_type,
        len(body),
        extra,
    )
    return head + body

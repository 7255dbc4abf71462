"""A real nginx (Debian's) on loopback for tests, with locations that misbehave the way real servers do."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.mounting import stop_process

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CACHE_PROXY_CONFIG = Path(__file__).parent.parent / "contrib" / "cluster" / "rangefs-cache.conf"
_START_TIMEOUT = 10.0

_MAIN = """
worker_processes 1;
user root;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    types {{ application/octet-stream bin; }}
{http}
}}
"""

_ORIGIN = """
    limit_req_zone $binary_remote_addr zone=slow:1m rate=4r/s;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /noranges/ {{ max_ranges 0; }}
        location /limited/ {{ limit_req zone=slow; limit_req_status 429; }}
        location /gzip/ {{ gzip on; gzip_types application/octet-stream; gzip_min_length 0; gzip_proxied any; }}
    }}
"""


def available() -> bool:
    return Path(NGINX).exists()


def has_slice_module() -> bool:
    """Whether this nginx was built with the slice module the shipped cache proxy needs."""
    built = subprocess.run([NGINX, "-V"], capture_output=True, text=True, check=False)
    return "--with-http_slice_module" in built.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_nginx(root: Path, prefix: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1; yields the base URL; nginx is ended by its PID however the block exits."""
    port = free_port()
    with running_config(_ORIGIN.format(port=port, root=root), prefix, port):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def running_config(http: str, prefix: Path, port: int) -> Iterator[None]:
    """Run nginx with ``http`` as the body of its http block (logs and temp files under ``prefix``) until
    it listens on ``port``; ended by its PID however the block exits."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(_MAIN.format(prefix=prefix, http=http))
    process = subprocess.Popen([NGINX, "-c", str(config), "-p", str(prefix)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {(prefix / 'error.log').read_text()}") from None
                time.sleep(0.05)
        yield
    finally:
        stop_process(process)


def cache_proxy_config(origin: str, port: int, cache_dir: Path, *, cache_valid: str | None) -> str:
    """contrib/cluster/rangefs-cache.conf made to run here: on 127.0.0.1:``port`` in front of ``origin``,
    caching in ``cache_dir``, slices fresh for ``cache_valid`` if given; everything else as shipped."""
    text = CACHE_PROXY_CONFIG.read_text()
    valid = "proxy_cache_valid 200 206 10s;"
    for shipped, here in (
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("proxy_pass https://origin.example;", f"proxy_pass {origin};"),
        ("/var/cache/nginx/rangefs", str(cache_dir)),
        (valid, valid if cache_valid is None else f"proxy_cache_valid 200 206 {cache_valid};"),
    ):
        if text.count(shipped) != 1:
            raise AssertionError(f"{CACHE_PROXY_CONFIG} no longer has exactly one {shipped!r}")
        text = text.replace(shipped, here)
    return text


@contextmanager
def running_cache_proxy(origin: str, prefix: Path, *, cache_valid: str | None = None) -> Iterator[str]:
    """The shipped caching proxy in front of ``origin``; yields its base URL. Its cache is ``prefix``/cache."""
    port = free_port()
    with running_config(cache_proxy_config(origin, port, prefix / "cache", cache_valid=cache_valid), prefix, port):
        yield f"http://127.0.0.1:{port}"


def access_log(prefix: Path) -> list[str]:
    path = prefix / "access.log"
    return path.read_text().splitlines() if path.exists() else []

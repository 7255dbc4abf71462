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
_START_TIMEOUT = 10.0

_CONFIG = """
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
    limit_req_zone $binary_remote_addr zone=slow:1m rate=4r/s;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /noranges/ {{ max_ranges 0; }}
        location /limited/ {{ limit_req zone=slow; limit_req_status 429; }}
        location /gzip/ {{ gzip on; gzip_types application/octet-stream; gzip_min_length 0; gzip_proxied any; }}
    }}
}}
"""


def available() -> bool:
    return Path(NGINX).exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_nginx(root: Path, prefix: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1; yields the base URL; nginx is ended by its PID however the block exits."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = prefix / "nginx.conf"
    config.write_text(_CONFIG.format(prefix=prefix, port=port, root=root))
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
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def access_log(prefix: Path) -> list[str]:
    path = prefix / "access.log"
    return path.read_text().splitlines() if path.exists() else []

"""A DNS server that knows no name: it answers every query NXDOMAIN, and prints each name asked for.

For tests that need a name that does not resolve without asking a real resolver: run it inside a network
namespace of the test's own (``ip netns exec NAME python -m tests.fakedns 127.0.0.1``) whose resolv.conf points
at it. It prints ``ready`` once listening, then one ``query NAME`` line per query, and exits after
``--lifetime`` seconds at the latest (the test ends it by PID before that).
"""

from __future__ import annotations

import argparse
import socket
import struct
import time

_NXDOMAIN_FLAGS = 0x8183  # a response (QR), recursion desired and available, RCODE 3: no such name
_HEADER = struct.Struct("!HHHHHH")


def question_end(query: bytes) -> int:
    """Offset just past the (single) question of a query: its name's labels, a zero byte, type and class."""
    offset = _HEADER.size
    while offset < len(query) and query[offset]:
        offset += 1 + query[offset]
    return offset + 1 + 4


def question_name(query: bytes) -> str:
    labels, offset = [], _HEADER.size
    while offset < len(query) and query[offset]:
        labels.append(query[offset + 1 : offset + 1 + query[offset]].decode("ascii", "replace"))
        offset += 1 + query[offset]
    return ".".join(labels)


def nxdomain(query: bytes) -> bytes:
    """The answer to ``query``: its id and question, no records, RCODE NXDOMAIN."""
    query_id = _HEADER.unpack_from(query)[0]
    return _HEADER.pack(query_id, _NXDOMAIN_FLAGS, 1, 0, 0, 0) + query[_HEADER.size : question_end(query)]


def serve(address: str, port: int, lifetime: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        sock.settimeout(0.5)
        print("ready", flush=True)
        deadline = time.monotonic() + lifetime
        while time.monotonic() < deadline:
            try:
                query, client = sock.recvfrom(4096)
            except TimeoutError:
                continue
            if len(query) <= _HEADER.size:
                continue
            print(f"query {question_name(query)}", flush=True)
            sock.sendto(nxdomain(query), client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()
    serve(args.address, args.port, args.lifetime)


if __name__ == "__main__":
    main()

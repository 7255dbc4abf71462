#!/usr/bin/env bash
# Set up (Debian packages, venv) and run every check: lint, types, layer contracts, then the test suite,
# which mounts real FUSE filesystems against a loopback HTTP origin (needs root or /dev/fuse access).
# nginx (not only nginx-light) for its slice module: tests/test_cluster_proxy.py runs the shipped cache proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh systemd unzip nginx-light nginx ffmpeg mpv libarchive-tools p7zip-full sqlite3 tar iproute2 iptables libnetfilter-queue-dev
.venv/bin/ruff check rangefs tests benchmarks scripts
.venv/bin/ruff format --check rangefs tests benchmarks scripts
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Set up, then mount sample files from a local HTTP origin and read them with ordinary tools.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh unzip
exec .venv/bin/python scripts/demo.py "$@"

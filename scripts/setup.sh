#!/usr/bin/env bash
# Install what rangefs needs on a fresh Debian/Ubuntu machine, then a virtual environment with rangefs in it.
# Usage: scripts/setup.sh [EXTRA_DEBIAN_PACKAGE...]   (idempotent: installs only what is missing)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(fuse3 libfuse3-dev pkg-config gcc "$@")
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || packages+=(python3-dev)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: rangefs needs Python >= 3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
# pip's output only matters when it fails (build back-ends print pages of warnings otherwise).
if ! output=$(.venv/bin/python -m pip install -q -e '.[test]' 2>&1); then
  echo "$output" >&2
  exit 1
fi

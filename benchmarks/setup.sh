#!/usr/bin/env bash
# Install what benchmarks/bench.py needs: nginx (origin), curl and aria2c (download baselines), rclone and
# httpdirfs (FUSE competitors), fuse3 (fusermount3), and the programs of the tools scenario: unzip, bsdtar
# (libarchive-tools), 7z (p7zip-full), ffmpeg/ffprobe, sqlite3 and tar. Idempotent: runs apt-get only when
# something is missing.
# Usage: benchmarks/setup.sh        (as root, or as a user with sudo)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian package name -> a command it provides.
declare -A provides=(
  [nginx-light]=nginx
  [aria2]=aria2c
  [curl]=curl
  [rclone]=rclone
  [httpdirfs]=httpdirfs
  [fuse3]=fusermount3
  [unzip]=unzip
  [libarchive-tools]=bsdtar
  [p7zip-full]=7z
  [ffmpeg]=ffprobe
  [sqlite3]=sqlite3
  [tar]=tar
)

missing=()
for package in "${!provides[@]}"; do
  command -v "${provides[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "benchmarks/setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "benchmarks/setup: all of ${provides[*]} are installed"
fi

[ -x .venv/bin/rangefs ] || bash scripts/setup.sh

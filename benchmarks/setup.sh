#!/usr/bin/env bash
# Install what benchmarks/bench.py needs: nginx (origin), curl and aria2c (download baselines), rclone and
# httpdirfs (FUSE competitors), fuse3 (fusermount3), the programs of the tools scenario (unzip, ffmpeg/ffprobe,
# mpv, sqlite3, and for the extra commands bsdtar, 7z, tar), what ../shared/netem/netns.sh needs for the
# latency profiles (iproute2, iptables, gcc, libnetfilter-queue-dev), and matplotlib in the venv (the chart).
# Idempotent: runs apt-get and pip only when something is missing.
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
  [mpv]=mpv
  [sqlite3]=sqlite3
  [tar]=tar
  [iproute2]=ip
  [iptables]=iptables
  [gcc]=cc
)
# Packages that provide no command (netns.sh compiles its packet delayer against this one).
libraries=(libnetfilter-queue-dev)

missing=()
for package in "${!provides[@]}"; do
  command -v "${provides[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
for package in "${libraries[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "benchmarks/setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "benchmarks/setup: all of ${provides[*]} ${libraries[*]} are installed"
fi

[ -x .venv/bin/rangefs ] || bash scripts/setup.sh
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/python -m pip install -q -e '.[test,bench]'

#!/usr/bin/env bash
# Installs everything fedgate's tests need on a fresh Debian 12 machine (root):
# Debian packages (OpenSSH, GridFTP + gfal2, litmus, rclone, cadaver, davfs2),
# the project venv (.venv, from Debian's python3 with system site packages so
# that Debian's python3-gfal2 imports), and the Python test dependencies.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(
  openssh-server openssh-client
  litmus rclone cadaver curl
  globus-gridftp-server-progs globus-gass-copy-progs globus-simple-ca globus-proxy-utils
  python3-gfal2 gfal2-plugin-gridftp gfal2-plugin-file gfal2
  openssl perl
  python3-venv python3-dev
)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # hadolint is not in every Debian release; install the rest regardless.
  avail=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then avail+=("$p"); else echo "setup: $p not in apt, skipped" >&2; fi
  done
  apt-get install -y -qq --no-install-recommends "${avail[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: done" >&2

#!/usr/bin/env bash
# Installs fedgate into .venv and runs the demo (two local sites, a demo user).
# On Debian/Ubuntu as root it installs python3-venv first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null \
      && [ "$(id -u)" = 0 ]; then
    echo "demo: installing python3-venv" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  if [ -x /usr/bin/python3 ]; then
    # system site packages: Debian's python3-gfal2 (gridftp sites) stays importable
    /usr/bin/python3 -m venv --system-site-packages .venv
  else
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q -e .
exec .venv/bin/fedgate serve "$@"

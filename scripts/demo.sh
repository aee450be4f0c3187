#!/usr/bin/env bash
# Installs fedgate into .venv and runs the demo (two local sites, a demo user).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv' 2>/dev/null; then
    /usr/bin/python3 -m venv --system-site-packages .venv
  else
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q -e .
exec .venv/bin/fedgate serve "$@"

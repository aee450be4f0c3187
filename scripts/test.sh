#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs lint, type
# checks and the whole test suite.  This is the README's test command and what
# .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-env.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" && ruff check .
echo "== mypy" && mypy adaptors staging gateway fedgate
echo "== pytest"
exec pytest -q -p no:cacheprovider "$@"

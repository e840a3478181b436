#!/usr/bin/env bash
# Run the whole test suite in ./.venv (created and installed on first use). Exits non-zero on any
# failure, including "no tests collected" (pytest exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"

#!/usr/bin/env bash
# The main job: train a small real task with several optimizer chains side by side (rich output).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/torchzero demo "$@"

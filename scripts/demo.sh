#!/usr/bin/env bash
# Demo: a real Label Studio + the ML backend + 200 handwritten digits, ready to label.
# Data persists under var/demo/ (delete it to start over). Ctrl-C stops everything.
# Extra arguments go to scripts/demo.py (e.g. --count 500, --exit-after-setup).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"

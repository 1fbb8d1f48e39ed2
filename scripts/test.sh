#!/usr/bin/env bash
# The one test command: set up (idempotent), lint, then every test incl. integration tests
# (they start Label Studio and redis themselves). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh --with-redis --with-compose --with-browser
if docker compose version >/dev/null 2>&1; then
  docker compose config --quiet
else
  docker-compose config --quiet
fi
echo "docker-compose.yml: valid"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Idempotent environment setup on a fresh Debian machine (fast when already done).
#   .venv     the backend: pip install -e '.[test]', then the [sam2] extra (torch/torchvision
#             pinned in pyproject.toml)
#   .venv-ls  Label Studio 1.23.2, kept apart from the backend (its pins differ)
#   --with-redis   also apt-get install redis-server when it is missing
#   --with-compose also apt-get install docker-compose (to validate docker-compose.yml) when
#                  neither `docker compose` nor `docker-compose` is there
#   --with-browser also apt-get install chromium (the browser tests drive it; Playwright's
#                  own browser download is not used)
# Env: PYTHON (default python3, >= 3.10), LS_VERSION (default 1.23.2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
LS_VERSION="${LS_VERSION:-1.23.2}"
WITH_REDIS=0
WITH_COMPOSE=0
WITH_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --with-redis) WITH_REDIS=1 ;;
    --with-compose) WITH_COMPOSE=1 ;;
    --with-browser) WITH_BROWSER=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[setup_env] $*"; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "setup_env.sh: $PYTHON must be Python >= 3.10" >&2; exit 1; }

make_venv() {  # make_venv DIR: create DIR unless it already holds a working python
  if [[ ! -x "$1/bin/python" ]] || ! "$1/bin/python" -c 'import pip' >/dev/null 2>&1; then
    log "creating $1"
    rm -rf "$1"
    "$PYTHON" -m venv "$1"
  fi
}

# A fresh install fills about 8 GB (.venv 7, most of it torch's CUDA build from the local
# index; .venv-ls 1) and pip unpacks into TMPDIR: say so up front rather than fail midway
# with pip's "No space left on device".
need_space() {  # need_space DIR GB
  local free_kb
  free_kb="$(df -Pk "$1" | awk 'NR == 2 {print $4}')"
  if [[ -n "$free_kb" ]] && (( free_kb < $2 * 1024 * 1024 )); then
    echo "setup_env.sh: $(( free_kb / 1024 )) MB free on $(df -P "$1" | awk 'NR == 2 {print $6}')" \
      "($1); installing needs about $2 GB there" >&2
    exit 1
  fi
}

# -- backend venv: reinstall only when pyproject.toml changed since the last install ------------
make_venv .venv
stamp=.venv/.setup-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x .venv/bin/ml-backend ]]; then
  log ".venv up to date"
else
  need_space . 10
  need_space "${TMPDIR:-/tmp}" 2
  log "installing the backend into .venv (pip install -e '.[test]')"
  .venv/bin/python -m pip install -q -e '.[test]'
  # sam2 (the [sam2] extra) builds from source and imports torch while it builds, so it goes in
  # second, without build isolation (which would fetch a second torch), and without its optional
  # CUDA extension (only a mask post-processing speed-up; CPU machines cannot build it).
  log "installing the [sam2] extra (a source build of sam2, without its CUDA extension)"
  .venv/bin/python -m pip install -q "setuptools>=68" wheel
  SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --no-build-isolation -e '.[test,sam2]'
  echo "$want" > "$stamp"
fi

# -- Label Studio venv ----------------------------------------------------------------------
ls_installed() {
  .venv-ls/bin/python - "$LS_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys
sys.exit(md.version("label-studio") != sys.argv[1])
PY
}
if [[ -x .venv-ls/bin/label-studio ]] && ls_installed; then
  log ".venv-ls has label-studio==$LS_VERSION"
else
  need_space . 2
  make_venv .venv-ls
  log "installing label-studio==$LS_VERSION into .venv-ls (about a minute)"
  .venv-ls/bin/python -m pip install -q "label-studio==$LS_VERSION"
fi

apt_install() {  # apt_install PACKAGE...
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  log "installing $* with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# -- redis-server (tests start their own on a free port; the distro's service is not needed) --
if [[ "$WITH_REDIS" == 1 ]]; then
  if command -v redis-server >/dev/null 2>&1; then
    log "redis-server present"
  else
    apt_install redis-server
  fi
fi

# -- docker compose (only the client: `config` validates the file without an engine) ---------
if [[ "$WITH_COMPOSE" == 1 ]]; then
  if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
    log "docker compose present"
  else
    apt_install docker-compose
  fi
fi
# -- chromium (the browser tests in tests/e2e run it headless through Playwright) ------------
if [[ "$WITH_BROWSER" == 1 ]]; then
  if [[ -x /usr/bin/chromium ]]; then
    log "chromium present"
  else
    apt_install chromium
  fi
fi
log "done"

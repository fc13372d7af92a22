#!/usr/bin/env bash
# One entry point for a fresh machine (Python 3.11, Java 17 + Maven, apt):
#   ./liqwatch.sh test              set everything up, run the fast tier, the integration tier (starts what it
#                                   needs), the fault tier and the fresh-clone check (scripts/fresh-clone-check.sh: the README's
#                                   two commands in a new clone; LIQWATCH_SKIP_FRESH_CLONE=1 skips it)
#   ./liqwatch.sh test PYTEST_ARGS  set everything up, run pytest on exactly PYTEST_ARGS (e.g. tests/test_config.py)
#   ./liqwatch.sh test-fast         set up Python only, run the fast tier without the slow tests (~3 min)
#   ./liqwatch.sh setup             only set up: .venv with liqwatch, Debian packages, Kafka jars
#   ./liqwatch.sh ARGS...           set up, then run `liqwatch ARGS...` (e.g. ./liqwatch.sh health --help)
# Setup is idempotent and quick when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
repo="$PWD"
venv="$repo/.venv"
log() { echo "[liqwatch.sh] $*" >&2; }

setup_python() {
  local py="${PYTHON:-python3.11}"
  command -v "$py" >/dev/null || py=python3
  if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv with $("$py" --version)"
    "$py" -m venv "$venv"
  fi
  local stamp="$venv/.liqwatch-installed" want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "installing liqwatch and its dependencies into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[dev]"
    echo "$want" >"$stamp"
  fi
}

setup_system() {
  scripts/setup-system.sh
}

run_tests() {
  if (($#)); then
    log "pytest $*"
    "$venv/bin/python" -m pytest "$@"
    return
  fi
  local rc=0
  log "fast tier"
  "$venv/bin/python" -m pytest -m "not integration" -q -n 2 || rc=$?  # two processes: the 2 cores
  log "integration tier (starts its own Kafka, Prometheus and Alertmanager on free 127.0.0.1 ports)"
  "$venv/bin/python" -m pytest -m "integration and not faults" -q || rc=$?
  log "fault tier (poison records, killed workers, a broker restart, webhooks down, on the real stack)"
  "$venv/bin/python" -m pytest -m faults -q -s || rc=$?
  if [[ "${LIQWATCH_SKIP_FRESH_CLONE:-}" == 1 ]]; then
    log "fresh-clone check skipped (LIQWATCH_SKIP_FRESH_CLONE=1)"
  else
    log "fresh-clone check (the README's two commands in a new clone of HEAD with a new state dir)"
    scripts/fresh-clone-check.sh || rc=$?
  fi
  return $rc
}

cmd="${1:-help}"
case "$cmd" in
  setup) setup_python; setup_system ;;
  test) shift; setup_python; setup_system; run_tests "$@" ;;
  test-fast) shift; setup_python; "$venv/bin/python" -m pytest -m "not integration and not slow" -q -n 2 "$@" ;;
  help|-h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) setup_python; setup_system; exec "$venv/bin/liqwatch" "$@" ;;
esac

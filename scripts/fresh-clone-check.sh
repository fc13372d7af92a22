#!/usr/bin/env bash
# Fresh-clone check (issue #5): the README's two quick-start commands work as written in a new clone.
#
#   scripts/fresh-clone-check.sh          # run by `./liqwatch.sh test` (no args) as its last step
#
# 1. `git clone` the committed HEAD of this repo (or $LIQWATCH_CLONE_FROM, at $LIQWATCH_CLONE_REF) into a new
#    temporary folder;
# 2. read the two commands from the README's quick-start code block (not hard-coded: the check follows the README)
#    and check that .ci/run calls exactly the README's test command;
# 3. in the clone, with a new state dir (LIQWATCH_STATE_DIR), a new HOME (so a new worker data dir
#    ~/.cache/liqwatch/workers) and a new TMPDIR, run
#      the demo command + " --accounts 5000 --speed 600" (the short mode of tests/integration/test_demo.py):
#        exit 0, and the summary shows a lead time;
#      the test command + " tests/test_config.py" (pytest args pass through: only that subset runs).
#    The first command builds the clone's own .venv, as on a fresh machine.
#
# Shared with the working copy, so the check stays quick: the pip cache, the Kafka jar cache (LIQWATCH_CACHE,
# default ~/.cache/liqwatch) and Maven's repository (~/.m2). Everything the check starts is stopped at the end,
# also on failure or Ctrl-C, and the temporary folder is removed (LIQWATCH_KEEP_FRESH_CLONE=1 keeps it).
#
# Environment: LIQWATCH_CLONE_FROM (default: this repo), LIQWATCH_CLONE_REF (default: HEAD),
# LIQWATCH_FRESH_CLONE_DEMO_ARGS (default: "--accounts 5000 --speed 600"),
# LIQWATCH_FRESH_CLONE_TEST_ARGS (default: "tests/test_config.py"), LIQWATCH_KEEP_FRESH_CLONE=1.
#
# The demo uses the default stack ports (Kafka 9092/9097, Prometheus 9090, Alertmanager 9093) and the webhook
# receiver port 8099; the check stops early with a message if one of them is taken.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
from="${LIQWATCH_CLONE_FROM:-$here}"
ref="${LIQWATCH_CLONE_REF:-HEAD}"
read -ra demo_args <<<"${LIQWATCH_FRESH_CLONE_DEMO_ARGS:---accounts 5000 --speed 600}"
read -ra test_args <<<"${LIQWATCH_FRESH_CLONE_TEST_ARGS:-tests/test_config.py}"
DEMO_TIMEOUT_S=420   # the demo step takes 4-4.5 min on 2 cores: ~30 s to build the .venv, ~220 s of demo
TEST_TIMEOUT_S=300
PORTS=(9092 9097 9090 9093 8099)

t_start=$SECONDS
log() { printf '[fresh-clone %4ds] %s\n' "$((SECONDS - t_start))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# --- the shared caches, resolved before HOME changes --------------------------------------------------------
real_home="$HOME"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
py="$("$py" -c 'import sys; print(sys.executable)')"   # a real path: a pyenv shim would look for ~/.pyenv
pip_cache="${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$real_home/.cache}/pip}"
jar_cache="${LIQWATCH_CACHE:-$real_home/.cache/liqwatch}"
m2_repo="$real_home/.m2/repository"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/liqwatch-fresh-clone.XXXXXX")"
clone="$tmp/liqwatch"
marker="LIQWATCH_FRESH_CLONE_CHECK=$tmp"   # in the environment of everything the check starts

# Every process whose environment carries this run's marker (the demo, its workers, its stack, pytest, ...).
our_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    if grep -qzxF "$marker" "$d/environ" 2>/dev/null; then
      echo "$pid"
    fi
  done
  return 0
}

# stop PIDS... : SIGTERM, then SIGKILL those still there after $wait_s seconds.
stop_pids() {
  local wait_s="$1" left p
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 $((wait_s * 5))); do
    left=()
    for p in "$@"; do
      [[ -d "/proc/$p" && "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]] && left+=("$p")
    done
    ((${#left[@]})) || return 0
    sleep 0.2
  done
  log "SIGKILL ${left[*]} (still there ${wait_s} s after SIGTERM)"
  kill -KILL "${left[@]}" 2>/dev/null || true
}

cleanup() {
  local rc=$? stack_pids others p
  trap - EXIT INT TERM
  set +e
  # What an interrupted demo left: its workers first (they need Kafka to leave their group), then its stack.
  stack_pids=" $(cat "$tmp"/state/run/*.pid 2>/dev/null | tr '\n' ' ') "
  others=()
  for p in $(our_pids); do
    [[ "$stack_pids" == *" $p "* ]] || others+=("$p")
  done
  if ((${#others[@]})); then
    log "stopping what is still running: ${others[*]}"
    stop_pids 30 "${others[@]}"
  fi
  if [[ -n "$(ls -A "$tmp/state/run" 2>/dev/null)" && -x "$clone/.venv/bin/liqwatch" ]]; then
    log "stopping the demo's stack ($tmp/state)"
    "$clone/.venv/bin/liqwatch" stack down --state-dir "$tmp/state" >/dev/null 2>&1
  fi
  others=($(our_pids))
  ((${#others[@]} == 0)) || { log "stopping what is still running: ${others[*]}"; stop_pids 10 "${others[@]}"; }
  if [[ "${LIQWATCH_KEEP_FRESH_CLONE:-}" == 1 ]]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  if ((rc == 0)); then
    log "PASSED in $((SECONDS - t_start)) s"
  else
    log "FAILED (exit $rc) after $((SECONDS - t_start)) s"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step NAME TIMEOUT COMMAND...: run COMMAND in the clone, output to the terminal and $tmp/NAME.log, timed.
step() {
  local name="$1" limit="$2" t0=$SECONDS rc=0
  shift 2
  log "$name: $*"
  # On time-out SIGINT first, so the demo stops its stack and workers itself; SIGKILL 90 s later if it hangs.
  # --foreground: Ctrl-C in a terminal reaches the command (and tee ignores it, so its last words are kept).
  (cd "$clone" && timeout --foreground -s INT -k 90 "$limit" "$@") 2>&1 | (trap '' INT; exec tee "$tmp/$name.log") \
    || rc=$?
  case $rc in
    0) ;;
    124) die "$name: timed out after $limit s" ;;
    130) log "$name: interrupted (Ctrl-C)"; exit 130 ;;
    *) die "$name: exit $rc" ;;
  esac
  log "$name: done in $((SECONDS - t0)) s"
}

# --- 1. clone ---------------------------------------------------------------------------------------------------
t0=$SECONDS
log "cloning $from ($ref) into $clone"
git clone -q "$from" "$clone"
git -C "$clone" checkout -q --detach "$ref"
log "clone: $(git -C "$clone" log -1 --format='%h %s' | cut -c1-100) (done in $((SECONDS - t0)) s)"

# --- 2. the README's commands -----------------------------------------------------------------------------------
# The first ```bash block under "## Quick start"; comments and blank lines dropped.
mapfile -t cmds < <(awk '
  /^## / { in_qs = ($0 ~ /^## Quick start/); next }
  in_qs && !in_code && /^```bash/ { in_code = 1; next }
  in_code && /^```/ { exit }
  in_code { sub(/[ \t]+#.*$/, ""); sub(/^#.*$/, ""); gsub(/^[ \t]+|[ \t]+$/, ""); if ($0 != "") print }
' "$clone/README.md")
((${#cmds[@]} == 2)) || die "README quick start: expected 2 commands, found ${#cmds[@]}: ${cmds[*]:-none}"
demo_cmd="" test_cmd=""
for c in "${cmds[@]}"; do
  [[ " $c " == *" demo "* ]] && demo_cmd="$c"
  [[ " $c " == *" test "* ]] && test_cmd="$c"
done
[[ -n "$demo_cmd" && -n "$test_cmd" ]] || die "README quick start: no demo and test command in: ${cmds[*]}"
log "README quick start: demo command '$demo_cmd', test command '$test_cmd'"
ci_cmd="$(grep -E '^[[:space:]]*exec[[:space:]]' "$clone/.ci/run" | sed -E 's/^[[:space:]]*exec[[:space:]]+//; s/[[:space:]]+$//')"
[[ "$ci_cmd" == "$test_cmd" ]] || die ".ci/run runs '$ci_cmd', the README's test command is '$test_cmd'"
log ".ci/run runs exactly the README's test command"

# --- 3. run them in the clone -------------------------------------------------------------------------------------
busy=()
for p in "${PORTS[@]}"; do
  (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && busy+=("$p")
done
((${#busy[@]} == 0)) || die "127.0.0.1 ports ${busy[*]} are in use (a local stack or another demo?): the demo needs them"

mkdir -p "$tmp/home" "$tmp/state" "$tmp/tmp"
ln -s "$real_home/.m2" "$tmp/home/.m2" 2>/dev/null || true
export "$marker"
export HOME="$tmp/home" TMPDIR="$tmp/tmp" LIQWATCH_STATE_DIR="$tmp/state"
export PYTHON="$py" PIP_CACHE_DIR="$pip_cache" LIQWATCH_CACHE="$jar_cache"
export MAVEN_OPTS="${MAVEN_OPTS:+$MAVEN_OPTS }-Dmaven.repo.local=$m2_repo"
export LIQWATCH_SKIP_FRESH_CLONE=1   # never nest this check (the test command gets args, so it would not anyway)
export COLUMNS=100
log "new HOME $HOME, state dir $LIQWATCH_STATE_DIR, TMPDIR $TMPDIR; shared: pip cache $PIP_CACHE_DIR," \
    "Kafka jars $LIQWATCH_CACHE, Maven $m2_repo; Python $PYTHON"

# As written in the README, with the args appended (bash -c: the README line is shell text).
step demo "$DEMO_TIMEOUT_S" bash -c "$demo_cmd \"\$@\"" demo "${demo_args[@]}"
grep -q "what liqwatch saw" "$tmp/demo.log" || die "demo: no summary in its output"
lead="$(grep -E 'lead time' "$tmp/demo.log" | grep -oE -- '-?[0-9]+(\.[0-9]+)? min' | head -1 || true)"
[[ -n "$lead" ]] || die "demo: the summary shows no lead time ($(grep -E 'lead time' "$tmp/demo.log" || echo 'no row'))"
log "demo: lead time $lead; $(grep -E 'wall time of the demo' "$tmp/demo.log" | sed -E 's/[│|]/ /g; s/ +/ /g; s/^ //')"
[[ "$lead" != -* ]] || log "warning: negative lead time (the critical cascade_risk came after the first wave)"
[[ -z "$(ls -A "$tmp/state/run" 2>/dev/null)" ]] || die "demo: pid files left in $tmp/state/run: $(ls "$tmp/state/run")"
for p in "${PORTS[@]}"; do
  (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "demo: 127.0.0.1:$p still answers after the demo ended"
done
left="$(our_pids)"   # (not in a pipeline: its other end would carry the marker too)
[[ -z "$left" ]] || die "demo: still running after it ended: ${left//$'\n'/ }"
log "demo: its stack, workers and receiver are gone, ports ${PORTS[*]} free"

step test "$TEST_TIMEOUT_S" bash -c "$test_cmd \"\$@\"" test "${test_args[@]}"
grep -qE '[0-9]+ passed' "$tmp/test.log" || die "test: no passed tests in its output"
if grep -qE 'integration tier|fast tier' "$tmp/test.log"; then
  die "test: with pytest args the test command ran the tiers instead of exactly the args given"
fi

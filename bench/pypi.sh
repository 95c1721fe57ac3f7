#!/usr/bin/env bash
# PyPI benchmark (issue 3): the vault beside devpi-server and proxpi, all in
# front of the same pypiserver, measured in alternating rounds by
# ../shared/peers/30-pypi.sh (project page req/s, warm and cold pip download,
# a 200 MiB wheel warm, cold and 10 concurrent cold, peak RSS).
#
#   bench/pypi.sh [run]     the whole area, under flock /tmp/av-bench.lock
#                           (env for 30-pypi.sh passes through: ROUNDS_WRK, SKIP, ...)
#   bench/pypi.sh start | stop | reset    the vault alone (reset: empty cache, restart, wait)
#
# The vault listens on 127.0.0.1:31710 with /pypi/ -> the peers' pypiserver
# (http://127.0.0.1:31081/simple/), data in $VAULT_DIR (default /tmp/av-bench-pypi).
# Tables: $RESULTS/30-pypi.md (default /tmp/av-anchors/results); progress on stderr.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PEERS=${PEERS:-$(cd "$REPO/../shared/peers" && pwd)}
VAULT_DIR=${VAULT_DIR:-/tmp/av-bench-pypi}
VAULT_PORT=${VAULT_PORT:-31710}
UPSTREAM_INDEX=${UPSTREAM_INDEX:-http://127.0.0.1:31081/simple/}
TWISTD=${TWISTD:-$REPO/.venv/bin/twistd}
PIDFILE=$VAULT_DIR/twistd.pid
URL=http://127.0.0.1:$VAULT_PORT

start() {
  mkdir -p "$VAULT_DIR"
  cat >"$VAULT_DIR/config.yml" <<EOF
cache_dir: $VAULT_DIR/cache
log_level: info
backends:
  - type: pypi
    config:
      prefix: /pypi/
      index_url: $UPSTREAM_INDEX
EOF
  (exec 3<>"/dev/tcp/127.0.0.1/$VAULT_PORT") 2>/dev/null && { echo "port $VAULT_PORT is in use" >&2; exit 1; }
  setsid "$TWISTD" -n --pidfile "$PIDFILE" artifactvault --config "$VAULT_DIR/config.yml" \
    --listen "tcp:$VAULT_PORT:interface=127.0.0.1:backlog=1024" \
    </dev/null >>"$VAULT_DIR/twistd.log" 2>&1 &
  for _ in $(seq 300); do
    curl -s -o /dev/null --max-time 1 "$URL/-/health" && return 0
    sleep 0.1
  done
  tail -20 "$VAULT_DIR/twistd.log" >&2
  echo "vault did not start" >&2
  exit 1
}

stop() { # by the PID twistd wrote, and only if that process is our twistd
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 0
  if grep -q "$VAULT_DIR/config.yml" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  fi
  rm -f "$PIDFILE"
}

reset() {
  stop
  rm -rf "$VAULT_DIR/cache"
  start
}

run() {
  trap stop EXIT
  reset
  EXTRA_INDEXES="vault=$URL/pypi/" RESET_vault="$HERE/pypi.sh reset" RSS_PIDFILE_vault="$PIDFILE" \
    "$PEERS/30-pypi.sh"
}

case ${1:-run} in
  start) start ;;
  stop) stop ;;
  reset) reset ;;
  run) exec flock /tmp/av-bench.lock "$0" _locked ;;
  _locked) run ;;
  *) echo "usage: $0 [run|start|stop|reset]" >&2; exit 2 ;;
esac

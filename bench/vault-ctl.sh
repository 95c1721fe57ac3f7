#!/usr/bin/env bash
# Usage: vault-ctl.sh start|stop|reset DIR PORT
#   Runs the vault for a benchmark: twistd -n artifactvault --config DIR/config.yml
#   listening on 127.0.0.1:PORT (the config is written by the caller; its
#   cache_dir should be DIR/cache), pid in DIR/twistd.pid, log in DIR/twistd.log.
#   reset = stop, empty the cache, start, and wait until it serves (for cold runs).
#   Log level warn by default (AV_BENCH_LOG_LEVEL=info to keep per-request lines).
set -euo pipefail
cmd=$1 DIR=$(cd "$2" && pwd) PORT=$3
REPO=$(cd "$(dirname "$0")/.." && pwd)
TWISTD=${AV_TWISTD:-$REPO/.venv/bin/twistd}
LEVEL=${AV_BENCH_LOG_LEVEL:-info}

stop() {
  [[ -s $DIR/twistd.pid ]] || return 0
  local pid; pid=$(cat "$DIR/twistd.pid")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
start() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { echo "vault-ctl: port $PORT is busy" >&2; exit 1; }
  setsid "$TWISTD" -n --pidfile "$DIR/twistd.pid" artifactvault --config "$DIR/config.yml" \
    --listen "tcp:$PORT:interface=127.0.0.1:backlog=1024" --log-level "$LEVEL" \
    </dev/null >>"$DIR/twistd.log" 2>&1 &
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/-/health" && return 0
    sleep 0.05
  done
  tail -20 "$DIR/twistd.log" >&2; echo "vault-ctl: vault did not start" >&2; exit 1
}
case $cmd in
  start) start ;;
  stop) stop ;;
  reset) stop; rm -rf "$DIR/cache"; start ;;
  *) echo "usage: $0 start|stop|reset DIR PORT" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Usage: verdaccio.sh start|stop|reset DIR PORT UPSTREAM_URL
#   verdaccio 6.8.0 (the test kit's: tests/upstreams/npm-kit-install) as a
#   caching proxy: one uplink, UPSTREAM_URL, for every package; package
#   documents kept 5 minutes (maxage 5m, as the vault's metadata_ttl),
#   tarballs kept. On 127.0.0.1:PORT, storage DIR/storage, Apache-style
#   DIR/access.log (tests/upstreams/npm-serve.js), pid DIR/pid.
#   reset: stop, empty its storage, start, wait until it serves (a cold proxy).
#   Stops only the process it started (its command line names DIR/).
set -euo pipefail
[[ $# -eq 4 ]] || { echo "usage: $0 start|stop|reset DIR PORT UPSTREAM_URL" >&2; exit 2; }
cmd=$1 PORT=$3 UPSTREAM=$4
mkdir -p "$2"; DIR=$(cd "$2" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
UP=$REPO/tests/upstreams

write_config() {
  cat >"$DIR/config.yaml" <<CONF
# Written by bench/peers/verdaccio.sh
storage: $DIR/storage
auth:
  htpasswd: { file: $DIR/htpasswd, max_users: -1 }
uplinks:
  up:
    url: $UPSTREAM
    maxage: 5m
    cache: true
    timeout: 60s
    agent_options: { keepAlive: true, maxSockets: 40, maxFreeSockets: 10 }
packages:
  '@*/*': { access: \$all, publish: \$authenticated, proxy: up }
  '**': { access: \$all, publish: \$authenticated, proxy: up }
max_body_size: 200mb
server: { keepAliveTimeout: 60 }
web: { enable: false }
log: { type: stdout, format: json, level: warn }
CONF
}
ours() { # -> verdaccio's pid, if it runs
  local pid
  pid=$(cat "$DIR/pid" 2>/dev/null) || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR/" && echo "$pid"
}
start() {
  ours >/dev/null && return 0
  "$UP/npm-kit-install" >&2
  write_config
  setsid node "$UP/npm-serve.js" "$DIR/config.yaml" "$PORT" "$DIR/access.log" \
    </dev/null >>"$DIR/verdaccio.log" 2>&1 &
  echo $! >"$DIR/pid"
  local i
  for ((i = 0; i < 600; i++)); do
    curl -s --noproxy '*' -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/-/ping" && return 0
    sleep 0.05
  done
  tail -n 20 "$DIR/verdaccio.log" >&2
  echo "verdaccio.sh: verdaccio did not start" >&2
  exit 1
}
stop() {
  local pid i
  pid=$(ours) || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill "$pid"
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}
case $cmd in
  start) start ;;
  stop) stop ;;
  reset) stop; rm -rf "$DIR/storage"; start ;;
  *) echo "usage: $0 start|stop|reset DIR PORT UPSTREAM_URL" >&2; exit 2 ;;
esac

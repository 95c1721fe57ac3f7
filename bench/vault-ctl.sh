#!/usr/bin/env bash
# Usage: vault-ctl.sh start|stop|reset DIR PORT  |  vault-ctl.sh python
#   The vault for a benchmark: twistd -n artifactvault --config DIR/config.yml
#   on 127.0.0.1:PORT (the caller writes the config; its cache_dir should be
#   DIR/cache), pid in DIR/twistd.pid (for RSS_PIDFILE_vault), log DIR/twistd.log.
#   reset: stop, empty the cache, start, and wait until it serves (a cold vault).
#   Stops only a process whose command line names DIR/config.yml.
#   python: the Python that runs the vault, as "Python 3.11.2 (/usr/bin/python3.11)"
#   (its venv's base), for every benchmark's first line: the same code takes 11-16%
#   less CPU on Debian's python3 (PGO, LTO) than on an unoptimized build (docs/benchmarks.md).
#   The twistd is $AV_TWISTD, else the checkout's .venv/bin/twistd.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TWISTD=${AV_TWISTD:-$REPO/.venv/bin/twistd}
if [[ $# -eq 1 && $1 == python ]]; then
  read -r line <"$TWISTD" || true
  [[ $line == '#!'* ]] || { echo "Python (unknown: $TWISTD has no #! line)"; exit 0; }
  # (the #! line unquoted: an interpreter with its options)
  ${line#\#!} -c 'import platform, sys
print(f"Python {platform.python_version()} ({getattr(sys, '"'"'_base_executable'"'"', sys.executable)})")' 2>/dev/null ||
    echo "Python (unknown: $TWISTD's interpreter did not run)"
  exit 0
fi
[[ $# -eq 3 ]] || { echo "usage: $0 start|stop|reset DIR PORT | python" >&2; exit 2; }
cmd=$1 PORT=$3
mkdir -p "$2"; DIR=$(cd "$2" && pwd)
PIDFILE=$DIR/twistd.pid

ours() { # -> the vault's pid, if it runs
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  grep -qF "$DIR/config.yml" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}
stop() {
  local pid i
  pid=$(ours) || return 0
  kill "$pid"
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}
start() {
  ours >/dev/null && return 0
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { echo "vault-ctl: port $PORT is busy" >&2; exit 1; }
  setsid "$TWISTD" -n --pidfile "$PIDFILE" artifactvault --config "$DIR/config.yml" \
    --listen "tcp:$PORT:interface=127.0.0.1:backlog=1024" </dev/null >>"$DIR/twistd.log" 2>&1 &
  local i
  for ((i = 0; i < 300; i++)); do
    curl -s --noproxy '*' -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/-/health" && return 0
    sleep 0.05
  done
  tail -n 20 "$DIR/twistd.log" >&2
  echo "vault-ctl: the vault did not start" >&2
  exit 1
}
case $cmd in
  start) start ;;
  stop) stop ;;
  reset) stop; rm -rf "$DIR/cache"; start ;;
  *) echo "usage: $0 start|stop|reset DIR PORT" >&2; exit 2 ;;
esac

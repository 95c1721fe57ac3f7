#!/usr/bin/env bash
# Registry benchmark (issue 4): the vault as a column of ../shared/peers/40-registry.sh,
# beside the CNCF distribution registry in proxy mode, both in front of the same
# upstream (registry-up on 127.0.0.1:31500), in the same alternating rounds.
#
#   bench/registry.sh            run it (under flock /tmp/av-bench.lock: one benchmark at a time)
#   bench/registry.sh start|stop|reset   the vault alone (reset: empty cache, restart, wait)
#
# The vault: twistd -n artifactvault on 127.0.0.1:31720, prefix /hub/ -> the upstream,
# its files (config, cache, pid, log) in $VAULT_DIR. Tables go to stdout; raw figures
# to $RESULTS. Env: PEERS (../shared/peers), VAULT_DIR, RESULTS, AV_VENV, and those of
# 40-registry.sh (ROUNDS_WARM, ROUNDS_COLD, CONC, CONC_REPS, SKIP).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$(cd "$REPO/../shared/peers" && pwd)}
VAULT_DIR=${VAULT_DIR:-/tmp/av-anchors/vault-registry}
VAULT_PORT=${VAULT_PORT:-31720}
UPSTREAM=http://127.0.0.1:31500
VENV=${AV_VENV:-$REPO/.venv}
PIDFILE=$VAULT_DIR/twistd.pid
export RESULTS=${RESULTS:-/tmp/av-anchors/results-vault-registry}

log() { printf '[%s registry.sh] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

alive() { [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  alive && { log "vault already running: pid $(cat "$PIDFILE")"; return 0; }
  mkdir -p "$VAULT_DIR"
  cat >"$VAULT_DIR/config.yml" <<CONF
http_host: 127.0.0.1
http_port: $VAULT_PORT
cache_dir: $VAULT_DIR/cache
log_level: info
backends:
  - type: registry
    config:
      prefix: /hub/
      registry_url: $UPSTREAM
      tag_ttl: 5m
  - type: registry          # the same upstream with a 1 s tag_ttl, for the revalidation check
    config:
      prefix: /hub1s/
      registry_url: $UPSTREAM
      tag_ttl: 1s
CONF
  setsid "$VENV/bin/twistd" -n --pidfile="$PIDFILE" --logfile="$VAULT_DIR/twistd.log" \
    artifactvault --config "$VAULT_DIR/config.yml" </dev/null >>"$VAULT_DIR/server.log" 2>&1 &
  local i
  for ((i = 0; i < 200; i++)); do
    curl -s --noproxy '*' -o /dev/null --max-time 1 "http://127.0.0.1:$VAULT_PORT/v2/" && alive && return 0
    sleep 0.05
  done
  tail -n 20 "$VAULT_DIR/twistd.log" "$VAULT_DIR/server.log" >&2 || true
  log "vault did not come up"; return 1
}

stop() {
  alive || return 0
  local pid i
  pid=$(cat "$PIDFILE")
  kill "$pid"
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}

reset() { stop; rm -rf "$VAULT_DIR/cache"; start; }

run() {
  start
  trap stop EXIT
  log "vault pid $(cat "$PIDFILE") on 127.0.0.1:$VAULT_PORT/hub -> $UPSTREAM; results in $RESULTS"
  EXTRA_REGISTRIES="vault=127.0.0.1:$VAULT_PORT/hub" \
  RESET_vault="$REPO/bench/registry.sh reset" \
  RSS_PIDFILE_vault="$PIDFILE" \
    "$PEERS/40-registry.sh"
  echo
  echo "Upstream requests of a warm pull of big:latest by tag (requests / HEADs of the tag):"
  pull_counting "/hub" "inside tag_ttl (5m)"
  pull_counting "/hub1s" "first through /hub1s/ (its own tag record, blobs warm)"
  sleep 1.2
  pull_counting "/hub1s" "after tag_ttl (1s)"
  rm -rf "$VAULT_DIR/pull"
}

pull_counting() { # PREFIX LABEL -> one pull by tag; prints the upstream requests it caused
  local reg=/tmp/av-anchors/reg hits="$PEERS/../upstreams/hits" head='^HEAD /v2/library/big/manifests/latest$' a0 h0
  rm -rf "$VAULT_DIR/pull"
  a0=$("$hits" "$reg" .) h0=$("$hits" "$reg" "$head")
  skopeo copy -q --all --src-tls-verify=false "docker://127.0.0.1:$VAULT_PORT$1/library/big:latest" \
    "oci:$VAULT_DIR/pull:latest"
  sleep 0.5  # the registry logs right after answering
  echo "  $2: $(( $("$hits" "$reg" .) - a0 )) / $(( $("$hits" "$reg" "$head") - h0 ))"
}

case ${1:-run} in
  start) start ;;
  stop) stop ;;
  reset) reset ;;
  run)
    if [[ -z ${AV_BENCH_LOCKED:-} ]]; then
      AV_BENCH_LOCKED=1 exec flock /tmp/av-bench.lock "$0" run
    fi
    run ;;
  *) echo "usage: $0 [run|start|stop|reset]" >&2; exit 2 ;;
esac

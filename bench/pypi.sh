#!/usr/bin/env bash
# PyPI benchmark (issue 3): the vault beside devpi-server and proxpi, all in
# front of the same pypiserver, measured in alternating rounds by
# ../shared/peers/30-pypi.sh (project page req/s, warm and cold pip download,
# a 200 MiB wheel warm, cold and 10 concurrent cold, peak RSS).
#
#   bench/pypi.sh      ~20 min; tables on stdout and in $RESULTS/30-pypi.md
#
# Runs under flock -o /tmp/av-bench.lock (one benchmark at a time on this machine).
# The vault listens on 127.0.0.1:31710 with /pypi/ -> the peers' pypiserver
# (http://127.0.0.1:31081/simple/), its files in $VAULT_DIR (bench/vault-ctl.sh).
# Env: PEERS, VAULT_DIR, VAULT_PORT, and those of 30-pypi.sh (ROUNDS_WRK, SKIP, ...).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$(cd "$REPO/../shared/peers" && pwd)}
VAULT_DIR=${VAULT_DIR:-/tmp/av-anchors/vault-pypi}
VAULT_PORT=${VAULT_PORT:-31710}
[[ ${AV_BENCH_LOCKED:-} ]] || exec env AV_BENCH_LOCKED=1 flock -o /tmp/av-bench.lock "$0" "$@"

mkdir -p "$VAULT_DIR"
cat >"$VAULT_DIR/config.yml" <<CONF
cache_dir: $VAULT_DIR/cache
backends:
  - type: pypi
    config: {prefix: /pypi/, index_url: "http://127.0.0.1:31081/simple/"}
CONF
CTL="$REPO/bench/vault-ctl.sh"
trap '"$CTL" stop "$VAULT_DIR" "$VAULT_PORT"' EXIT
"$CTL" reset "$VAULT_DIR" "$VAULT_PORT"
echo "# vault: $(git -C "$REPO" rev-parse --short HEAD) on $("$REPO/bench/vault-ctl.sh" python), $(date -u +%FT%TZ)"
EXTRA_INDEXES="vault=http://127.0.0.1:$VAULT_PORT/pypi/" RESET_vault="$CTL reset $VAULT_DIR $VAULT_PORT" \
  RSS_PIDFILE_vault="$VAULT_DIR/twistd.pid" "$PEERS/30-pypi.sh"

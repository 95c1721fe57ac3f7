#!/usr/bin/env bash
# Issue 2 benchmark: the vault's http backend as one more column of the
# peers' areas 10 (physical reference) and 20 (nginx proxy_cache), measured
# in the same alternating rounds, plus what those areas do not measure:
# cold-miss time to first byte, clients joining a throttled download, and
# peak RSS with 20 slow readers.
#
#   bench/http.sh            # ~15 min; tables on stdout and in $AV/results/
#   AREAS="20" bench/http.sh # only some of: 10 20 extra
#
# Runs under flock -o /tmp/av-bench.lock (one benchmark at a time on this machine;
# -o so that servers started meanwhile do not inherit the lock).
# Env: PEERS (../shared/peers), AV (/tmp/av-anchors), VAULT_PORT (31700), and
# the peers' own knobs (ROUNDS_BIG, ROUNDS_SMALL, WRK_DURATION, BURST_N, SKIP...).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$(cd "$REPO/../shared/peers" && pwd)}
export AV=${AV:-/tmp/av-anchors}
RESULTS=${RESULTS:-$AV/results}
PORT=${VAULT_PORT:-31700}
VDIR=$AV/vault
AREAS=${AREAS:-10 20 extra}
[[ ${AV_BENCH_LOCKED:-} ]] || exec env AV_BENCH_LOCKED=1 flock -o /tmp/av-bench.lock "$0" "$@"

mkdir -p "$VDIR" "$RESULTS"
cat >"$VDIR/config.yml" <<CONF
cache_dir: $VDIR/cache
backends:
  - type: http
    config: {prefix: /files/, base_url: "http://127.0.0.1:31090"}
  - type: http
    config: {prefix: /slow/, base_url: "http://127.0.0.1:31094"}
CONF
"$REPO/bench/vault-ctl.sh" reset "$VDIR" "$PORT"
cleanup() {
  "$REPO/bench/vault-ctl.sh" stop "$VDIR" "$PORT"
  "$PEERS/peers/slow-upstream.sh" stop "$AV/slow" >/dev/null 2>&1 || true
}
trap cleanup EXIT

export EXTRA_TARGETS="vault=http://127.0.0.1:$PORT/files"
export EXTRA_SLOW_TARGETS="vault=http://127.0.0.1:$PORT/slow"
export RSS_PIDFILE_vault=$VDIR/twistd.pid
export CLEAN_vault="find $VDIR/cache -type f -size +100M -delete"
echo "# vault: $(git -C "$REPO" rev-parse --short HEAD) on $("$REPO/bench/vault-ctl.sh" python), $(date -u +%FT%TZ)"
peer_areas=()
for a in $AREAS; do [[ $a == extra ]] || peer_areas+=("$a"); done
((${#peer_areas[@]})) && "$PEERS/run-all.sh" "${peer_areas[@]}"

if [[ " $AREAS " == *" extra "* ]]; then
  WWW=$AV/files/www
  "$PEERS/../upstreams/files-up" "$AV/files" 31090 >&2
  python3 "$REPO/bench/ttfb.py" --www "$WWW" --file large.bin --direct http://127.0.0.1:31090/large.bin \
    --proxy "http://127.0.0.1:$PORT/files" --rounds 7 --clean "$CLEAN_vault; sync" --json "$RESULTS/http-extra.jsonl"
  "$PEERS/peers/slow-upstream.sh" start "$AV/slow" 31094 "$WWW" 1m >&2
  python3 "$REPO/bench/joiners.py" --www "$WWW" --file medium.bin --proxy "http://127.0.0.1:$PORT/slow" \
    --upstream-dir "$AV/slow" -n 30 --interval 0.25 --label "joiners on a 1 MB/s upstream" \
    --json "$RESULTS/http-extra.jsonl"
  bash -c "$CLEAN_vault"; sync
  python3 "$REPO/bench/slow_readers.py" --www "$WWW" --file large.bin --proxy "http://127.0.0.1:$PORT/files" \
    --pidfile "$VDIR/twistd.pid" -n 20 --rate 10M --seconds 20 --json "$RESULTS/http-extra.jsonl"
  bash -c "$CLEAN_vault"
fi

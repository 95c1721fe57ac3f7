#!/usr/bin/env bash
# Registry benchmark (issue 4): the vault as a column of ../shared/peers/40-registry.sh,
# beside the CNCF distribution registry in proxy mode, both in front of the same
# upstream (registry-up on 127.0.0.1:31500), in the same alternating rounds.
#
#   bench/registry.sh      ~6 min, under flock -o /tmp/av-bench.lock (one benchmark at a time)
#
# The vault: twistd -n artifactvault on 127.0.0.1:31720, prefix /hub/ -> the upstream,
# its files (config, cache, pid, log) in $VAULT_DIR (bench/vault-ctl.sh). Tables go to stdout;
# raw figures to $RESULTS. Env: PEERS (../shared/peers), VAULT_DIR, RESULTS, and those of
# 40-registry.sh (ROUNDS_WARM, ROUNDS_COLD, CONC, CONC_REPS, SKIP).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$(cd "$REPO/../shared/peers" && pwd)}
VAULT_DIR=${VAULT_DIR:-/tmp/av-anchors/vault-registry}
VAULT_PORT=${VAULT_PORT:-31720}
UPSTREAM=http://127.0.0.1:31500
export RESULTS=${RESULTS:-/tmp/av-anchors/results}
CTL="$REPO/bench/vault-ctl.sh"
[[ ${AV_BENCH_LOCKED:-} ]] || exec env AV_BENCH_LOCKED=1 flock -o /tmp/av-bench.lock "$0" "$@"

mkdir -p "$VAULT_DIR"
cat >"$VAULT_DIR/config.yml" <<CONF
cache_dir: $VAULT_DIR/cache
backends:
  - type: registry
    config: {prefix: /hub/, registry_url: "$UPSTREAM", tag_ttl: 5m}
  - type: registry          # the same upstream with a 1 s tag_ttl, for the revalidation check
    config: {prefix: /hub1s/, registry_url: "$UPSTREAM", tag_ttl: 1s}
CONF
trap '"$CTL" stop "$VAULT_DIR" "$VAULT_PORT"' EXIT
"$CTL" reset "$VAULT_DIR" "$VAULT_PORT"
echo "# vault: $(git -C "$REPO" rev-parse --short HEAD) on $("$REPO/bench/vault-ctl.sh" python), $(date -u +%FT%TZ)"
EXTRA_REGISTRIES="vault=127.0.0.1:$VAULT_PORT/hub" RESET_vault="$CTL reset $VAULT_DIR $VAULT_PORT" \
  RSS_PIDFILE_vault="$VAULT_DIR/twistd.pid" "$PEERS/40-registry.sh"
echo
echo "Upstream requests of a warm pull of big:latest by tag (requests / HEADs of the tag):"
pull_counting() { # PREFIX LABEL -> one pull by tag; prints the upstream requests it caused
  local reg=/tmp/av-anchors/reg hits="$PEERS/../upstreams/hits" head='^HEAD /v2/library/big/manifests/latest$' a0 h0
  rm -rf "$VAULT_DIR/pull"
  a0=$("$hits" "$reg" .) h0=$("$hits" "$reg" "$head")
  skopeo copy -q --all --src-tls-verify=false "docker://127.0.0.1:$VAULT_PORT$1/library/big:latest" \
    "oci:$VAULT_DIR/pull:latest"
  sleep 0.5  # the registry logs right after answering
  echo "  $2: $(( $("$hits" "$reg" .) - a0 )) / $(( $("$hits" "$reg" "$head") - h0 ))"
}
pull_counting "/hub" "inside tag_ttl (5m)"
pull_counting "/hub1s" "first through /hub1s/ (its own tag record, blobs warm)"
sleep 1.2  # tag_ttl is 1 s: let it pass
pull_counting "/hub1s" "after tag_ttl (1s)"
rm -rf "$VAULT_DIR/pull"

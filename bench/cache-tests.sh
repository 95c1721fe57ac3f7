#!/usr/bin/env bash
# The public HTTP caching test suite (http-tests/cache-tests, the one
# cache-tests.fyi publishes) against the vault's http backend and, in the
# same run, nginx proxy_cache: results per test group in
# docs/conformance-http.md (see there for how to read them).
#
#   bench/cache-tests.sh                       # both, ~6 min; tables on stdout
#   TARGETS="vault" bench/cache-tests.sh       # some of: nginx vault vault-immutable vault-default
#   CT_ID=freshness-max-age bench/cache-tests.sh  # one test, with its requests dumped
#
# The suite is not part of this repository: it is fetched (a pinned commit of
# its git repository; the npm registry's http-cache-tests is older and has
# fewer tests) into $CT_DIR/suite, which is outside git, and its own
# dependencies installed there with npm:
#   git clone https://github.com/http-tests/cache-tests.git $CT_DIR/src
#   git -C $CT_DIR/src archive $CT_COMMIT | tar -x -C $CT_DIR/suite
#   (cd $CT_DIR/suite && npm install --omit=dev)
# CACHE_TESTS_GIT names another clone to fetch from (a local mirror).
#
# What runs (all on 127.0.0.1): the suite's origin server (node); nginx with
# proxy_cache in front of it, configured as the suite's own docker image does
# (proxy_cache_revalidate on, no forced validity); the vault with one http
# backend, prefix /test/ → <origin>/test/ (the suite's /test/<uuid> paths one
# to one, freshness: upstream); and, since the suite also PUTs its test
# set-up to /config/ and reads /state/ on the same base URL, a plain nginx
# router (no cache) in front of the vault: /test/ to the vault, the rest to
# the origin. The router passes the vault's answers on as they are (its own
# Date and Server hidden, the vault's kept).
#
# Runs under flock -o /tmp/av-bench.lock, as the other benchmarks (the suite
# pauses 3 s between requests of many tests: a loaded machine can move results).
# Env: CT_DIR (${AV_KIT_DIR:-/tmp/av-up}/cache-tests), CT_PORT (first of four
# ports, 24000 + AV_KIT_PORT_OFFSET), CT_COMMIT, CACHE_TESTS_GIT, TARGETS, CT_ID.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CT_DIR=${CT_DIR:-${AV_KIT_DIR:-/tmp/av-up}/cache-tests}
CT_COMMIT=${CT_COMMIT:-b55b8bda3dbb8c927c04e85bd8d496a8caa3e4ba}
CACHE_TESTS_GIT=${CACHE_TESTS_GIT:-https://github.com/http-tests/cache-tests.git}
BASE_PORT=${CT_PORT:-$((24000 + ${AV_KIT_PORT_OFFSET:-0}))}
ORIGIN=$BASE_PORT NGINX=$((BASE_PORT + 1)) VAULT=$((BASE_PORT + 2)) ROUTER=$((BASE_PORT + 3))
TARGETS=${TARGETS:-nginx vault}
CT_ID=${CT_ID:-}
SUITE=$CT_DIR/suite
OUT=$CT_DIR/results
[[ ${AV_BENCH_LOCKED:-} ]] || exec env AV_BENCH_LOCKED=1 flock -o /tmp/av-bench.lock "$0" "$@"
mkdir -p "$CT_DIR" "$OUT"

say() { printf '[cache-tests] %s\n' "$*" >&2; }

fetch_suite() {
  [[ -f $SUITE/.commit && $(cat "$SUITE/.commit") == "$CT_COMMIT" && -d $SUITE/node_modules ]] && return 0
  say "fetching http-tests/cache-tests $CT_COMMIT from $CACHE_TESTS_GIT"
  [[ -d $CT_DIR/src/.git || -f $CT_DIR/src/HEAD ]] || git clone --quiet "$CACHE_TESTS_GIT" "$CT_DIR/src"
  git -C "$CT_DIR/src" cat-file -e "$CT_COMMIT^{commit}" 2>/dev/null || git -C "$CT_DIR/src" fetch --quiet origin
  rm -rf "$SUITE" && mkdir -p "$SUITE"
  git -C "$CT_DIR/src" archive "$CT_COMMIT" | tar -x -C "$SUITE"
  (cd "$SUITE" && npm install --omit=dev --no-audit --no-fund --loglevel=error >&2)
  echo "$CT_COMMIT" >"$SUITE/.commit"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT -> waits up to 15 s for something to listen
  local i
  for ((i = 0; i < 300; i++)); do port_open "$1" && return 0; sleep 0.05; done
  say "nothing listens on $1"; return 1
}

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $CT_DIR/vault/twistd.pid ]] && "$REPO/bench/vault-ctl.sh" stop "$CT_DIR/vault" "$VAULT" || true
}
trap cleanup EXIT

start_origin() {
  port_open "$ORIGIN" && { say "port $ORIGIN is busy"; exit 1; }
  (cd "$SUITE" && exec env npm_package_config_protocol=http npm_config_port="$ORIGIN" \
    npm_config_pidfile="$CT_DIR/origin.pid" node test-engine/server/server.mjs) >"$CT_DIR/origin.log" 2>&1 &
  PIDS+=($!)
  wait_port "$ORIGIN"
}

# nginx_conf NAME BODY -> starts an nginx (its own prefix DIR/NAME) with BODY as its server blocks
start_nginx() {
  local name=$1 body=$2 dir=$CT_DIR/$1
  rm -rf "$dir" && mkdir -p "$dir/cache" "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 1024; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  $body
}
EOF
  nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stderr" 2>&1 &
  PIDS+=($!)
}

run_suite() { # LABEL BASE -> results in $OUT/LABEL.json
  local label=$1 base=$2
  say "running the suite against $label ($base)"
  local t0=$SECONDS
  (cd "$SUITE" && npm_config_base="$base" npm_config_id="$CT_ID" npm_package_config_id="" node --no-warnings test-engine/cli.mjs) \
    >"$OUT/$label.json.tmp"
  mv "$OUT/$label.json.tmp" "$OUT/$label.json"
  say "$label: $((SECONDS - t0)) s"
}

vault_config() { # FRESHNESS
  mkdir -p "$CT_DIR/vault"
  cat >"$CT_DIR/vault/config.yml" <<CONF
cache_dir: $CT_DIR/vault/cache
log_level: warn
backends:
  - type: http
    config: {prefix: /test/, base_url: "http://127.0.0.1:$ORIGIN/test/", backoff: 0${1:+, freshness: $1}}
CONF
}

fetch_suite
command -v nginx >/dev/null || { say "nginx is needed (apt-get install nginx-light)"; exit 1; }
start_origin
[[ " $TARGETS " == *" nginx "* ]] && start_nginx nginx "
  proxy_cache_path $CT_DIR/nginx/cache levels=1:2 keys_zone=ct:8m max_size=1000m inactive=600m;
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN;
      proxy_cache ct;
      proxy_cache_revalidate on;
      proxy_http_version 1.1;
    }
  }"
start_nginx router "
  server {
    listen 127.0.0.1:$ROUTER;
    location /test/ {
      proxy_pass http://127.0.0.1:$VAULT;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_pass_header Date;
      proxy_pass_header Server;
    }
    location / { proxy_pass http://127.0.0.1:$ORIGIN; proxy_http_version 1.1; }
  }"
wait_port "$ROUTER"

for target in $TARGETS; do
  case $target in
    nginx)
      wait_port "$NGINX"
      run_suite nginx "http://127.0.0.1:$NGINX" ;;
    vault|vault-immutable|vault-default)
      case $target in vault) vault_config upstream ;; vault-immutable) vault_config immutable ;; *) vault_config "" ;; esac
      "$REPO/bench/vault-ctl.sh" reset "$CT_DIR/vault" "$VAULT"
      run_suite "$target" "http://127.0.0.1:$ROUTER"
      "$REPO/bench/vault-ctl.sh" stop "$CT_DIR/vault" "$VAULT" ;;
    *) say "unknown target $target"; exit 2 ;;
  esac
done

if [[ -z $CT_ID ]]; then
  args=()
  for target in $TARGETS; do args+=("$target=$OUT/$target.json"); done
  node "$REPO/bench/cache-tests-summary.mjs" "$SUITE" "${args[@]}"
else
  for target in $TARGETS; do cat "$OUT/$target.json"; done
fi

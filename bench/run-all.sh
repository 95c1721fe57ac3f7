#!/usr/bin/env bash
# Every benchmark, one after the other (each takes /tmp/av-bench.lock itself):
#   bench/run-all.sh         ~65 min; each one's tables also in $OUT/{http,pypi,registry,npm}.md
# Needs the peers' setup (../shared/peers/setup.sh) once.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/av-anchors/vault-results}
mkdir -p "$OUT"
for b in http pypi registry; do
  echo "== bench/$b.sh ($(date -u +%FT%TZ))"
  "$REPO/bench/$b.sh" > >(tee "$OUT/$b.md") 2> "$OUT/$b.log"
done
echo "== bench/npm_bench.py ($(date -u +%FT%TZ))"
"$REPO/.venv/bin/python" "$REPO/bench/npm_bench.py" > >(tee "$OUT/npm.md") 2> "$OUT/npm.log"

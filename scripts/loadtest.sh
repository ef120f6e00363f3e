#!/usr/bin/env bash
# Load test of POST /v1/consume over loopback with keep-alive: usage-sync
# against the naive baseline (one SQLite UPDATE per request), same machine,
# same run. Prints a markdown table; docs/benchmarks.md records one run.
#
#   scripts/loadtest.sh                  # 64 connections, 10 s, 10 000 users
#   CONNS=128 DURATION=30s scripts/loadtest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
export USERS=${USERS:-10000}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }
cargo build -q --release -p usage-sync-server --bin usage-sync --example naive_baseline
BIN=target/release/usage-sync
BASE=target/release/examples/naive_baseline
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

wait_port() {
  for _ in $(seq 1 200); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2; exit 1
}

# run_wrk PORT -> "requests rps p50_ms p99_ms non2xx"
run_wrk() {
  local line
  line=$(wrk -t2 -c"$CONNS" -d"$DURATION" -s scripts/consume.lua "http://127.0.0.1:$1" | grep '^RESULT')
  python3 - "$line" <<'PY'
import sys
kv = dict(p.split("=") for p in sys.argv[1].split()[1:])
req = int(kv["requests"]); secs = int(kv["duration_us"]) / 1e6
print(req, round(req / secs), round(int(kv["p50_us"]) / 1000, 2), round(int(kv["p99_us"]) / 1000, 2), int(kv["non2xx"]) + int(kv["socket_errors"]))
PY
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); wrk -t2 -c$CONNS -d$DURATION; $USERS users"

# usage-sync: every request counted (unlimited plan), production-like log
# volume (verbose off), default development sync cadence.
cat > "$WORK/usage-sync.toml" <<EOF
[plans.free]
limits = { premium = "unlimited", fast = "unlimited" }
EOF
PORT=18431
USAGE_SYNC_DATA_DIR="$WORK/us" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" USAGE_SYNC_VERBOSE_LOGGING=false \
  USAGE_SYNC_LOG_LEVEL=warn "$BIN" --config "$WORK/usage-sync.toml" serve 2>"$WORK/us.log" &
US_PID=$!
wait_port $PORT
read -r US_REQ US_RPS US_P50 US_P99 US_ERR < <(run_wrk $PORT)
curl -s -XPOST "http://127.0.0.1:$PORT/admin/v1/sync" >/dev/null
kill -TERM $US_PID; wait $US_PID || true
US_DB=$(sqlite3 "$WORK/us/usage-sync.db" "SELECT COALESCE(SUM(used),0) FROM usage")
US_FLUSHES=$(sqlite3 "$WORK/us/usage-sync.db" "SELECT COUNT(*) FROM flushes")

declare -A B_REQ B_RPS B_P50 B_P99 B_ERR B_DB
for SYNC in FULL NORMAL; do
  PORT=$((PORT + 1))
  "$BASE" $PORT "$WORK/base-$SYNC.db" $SYNC "$USERS" 2>"$WORK/base.log" &
  BPID=$!
  wait_port $PORT
  read -r B_REQ[$SYNC] B_RPS[$SYNC] B_P50[$SYNC] B_P99[$SYNC] B_ERR[$SYNC] < <(run_wrk $PORT)
  kill $BPID; wait $BPID 2>/dev/null || true
  B_DB[$SYNC]=$(sqlite3 "$WORK/base-$SYNC.db" "SELECT SUM(used) FROM usage")
done

ratio() { python3 -c "print(f'{$1/$2:.1f}×')"; }
echo
echo "| server | requests/s | p50 ms | p99 ms | errors | acknowledged | in database | DB statements |"
echo "|---|---|---|---|---|---|---|---|"
echo "| usage-sync (in memory, batched flush) | $US_RPS | $US_P50 | $US_P99 | $US_ERR | $US_REQ | $US_DB | $US_FLUSHES transactions |"
for SYNC in FULL NORMAL; do
  echo "| baseline: one UPDATE per request, synchronous=$SYNC | ${B_RPS[$SYNC]} | ${B_P50[$SYNC]} | ${B_P99[$SYNC]} | ${B_ERR[$SYNC]} | ${B_REQ[$SYNC]} | ${B_DB[$SYNC]} | ${B_DB[$SYNC]} |"
done
echo
echo "usage-sync / baseline FULL: $(ratio "$US_RPS" "${B_RPS[FULL]}"); usage-sync / baseline NORMAL: $(ratio "$US_RPS" "${B_RPS[NORMAL]}")"
echo "in database minus acknowledged (requests in flight when wrk stopped, answered but not read; at most $CONNS):"
echo "  usage-sync $((US_DB - US_REQ)), baseline FULL $((B_DB[FULL] - B_REQ[FULL])), baseline NORMAL $((B_DB[NORMAL] - B_REQ[NORMAL]))"

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
# volume (verbose off), default development sync cadence; once per
# durability mode of the write-ahead log.
printf '[plans.free]\nlimits = { premium = "unlimited", fast = "unlimited" }\n' > "$WORK/usage-sync.toml"
PORT=18431
declare -A U_REQ U_RPS U_P50 U_P99 U_ERR U_DB U_TX
for MODE in none batched fsync; do
  PORT=$((PORT + 1))
  USAGE_SYNC_DATA_DIR="$WORK/us-$MODE" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" USAGE_SYNC_VERBOSE_LOGGING=false \
    USAGE_SYNC_DURABILITY=$MODE USAGE_SYNC_LOG_LEVEL=warn "$BIN" --config "$WORK/usage-sync.toml" serve 2>"$WORK/us.log" &
  US_PID=$!
  wait_port $PORT
  read -r U_REQ[$MODE] U_RPS[$MODE] U_P50[$MODE] U_P99[$MODE] U_ERR[$MODE] < <(run_wrk $PORT)
  curl -s -XPOST "http://127.0.0.1:$PORT/admin/v1/sync" >/dev/null
  kill -TERM $US_PID; wait $US_PID || true
  U_DB[$MODE]=$(sqlite3 "$WORK/us-$MODE/usage-sync.db" "SELECT COALESCE(SUM(used),0) FROM usage")
  U_TX[$MODE]=$(sqlite3 "$WORK/us-$MODE/usage-sync.db" "SELECT COUNT(*) FROM flushes")
done

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
for MODE in none batched fsync; do
  echo "| usage-sync, durability=$MODE | ${U_RPS[$MODE]} | ${U_P50[$MODE]} | ${U_P99[$MODE]} | ${U_ERR[$MODE]} | ${U_REQ[$MODE]} | ${U_DB[$MODE]} | ${U_TX[$MODE]} transactions |"
done
for SYNC in FULL NORMAL; do
  echo "| baseline: one UPDATE per request, synchronous=$SYNC | ${B_RPS[$SYNC]} | ${B_P50[$SYNC]} | ${B_P99[$SYNC]} | ${B_ERR[$SYNC]} | ${B_REQ[$SYNC]} | ${B_DB[$SYNC]} | ${B_DB[$SYNC]} |"
done
echo
echo "durability modes against none: batched $(ratio "${U_RPS[batched]}" "${U_RPS[none]}"), fsync $(ratio "${U_RPS[fsync]}" "${U_RPS[none]}")"
echo "like for like: fsync / baseline FULL $(ratio "${U_RPS[fsync]}" "${B_RPS[FULL]}"); batched / baseline NORMAL $(ratio "${U_RPS[batched]}" "${B_RPS[NORMAL]}")"
echo "in database minus acknowledged (requests in flight when wrk stopped, answered but not read; at most $CONNS):"
echo "  usage-sync none $((U_DB[none] - U_REQ[none])), batched $((U_DB[batched] - U_REQ[batched])), fsync $((U_DB[fsync] - U_REQ[fsync])), baseline FULL $((B_DB[FULL] - B_REQ[FULL])), baseline NORMAL $((B_DB[NORMAL] - B_REQ[NORMAL]))"

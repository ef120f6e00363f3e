#!/usr/bin/env bash
# Log volume of verbose_logging=true against false under the same load:
# the release binary with JSON logs (the production format), wrk with the
# same settings for each, bytes and lines written to stderr. Prints a
# Markdown table for docs/metrics.md.
#
#   scripts/logvolume.sh              # 16 connections, 5 s, 1 000 users
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-16}
DURATION=${DURATION:-5s}
export USERS=${USERS:-1000}
. scripts/lib.sh
need_wrk
cargo build -q --release -p usage-sync-server --bin usage-sync
BIN=target/release/usage-sync
work_dir
plan_file unlimited
PORT=18630
echo "| verbose_logging | requests | log lines | log bytes | bytes per request |"
echo "|---|---|---|---|---|"
for VERBOSE in true false; do
  PORT=$((PORT + 1))
  USAGE_SYNC_DATA_DIR="$WORK/$VERBOSE" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" USAGE_SYNC_VERBOSE_LOGGING=$VERBOSE \
    USAGE_SYNC_LOG_FORMAT=json USAGE_SYNC_THRESHOLD=10 USAGE_SYNC_CHECK_INTERVAL=1s \
    "$BIN" --config "$WORK/usage-sync.toml" serve 2>"$WORK/$VERBOSE.log" &
  PID=$!
  wait_http "$PORT"
  REQ=$(wrk -t2 -c"$CONNS" -d"$DURATION" -s scripts/consume.lua "http://127.0.0.1:$PORT" | sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p')
  kill -TERM $PID; wait $PID || true
  LINES=$(wc -l < "$WORK/$VERBOSE.log"); BYTES=$(wc -c < "$WORK/$VERBOSE.log")
  echo "| $VERBOSE | $REQ | $LINES | $BYTES | $(python3 -c "print(f'{$BYTES / $REQ:.2f}')") |"
done

#!/usr/bin/env bash
# Load test of POST /v1/consume for one instance in each sharing mode:
# `none` (single instance), `redis` (strict: one Lua script per consume) and
# `lease` (admit from leases taken from Redis), same machine, same run,
# median of ROUNDS interleaved rounds. Also counts Redis operations per
# consume, from the instance's own counter and from Redis's
# total_commands_processed.
#
#   scripts/loadtest-sharing.sh            # 3 rounds, 64 connections, 10 s, 10 000 users
#   REDIS_URL=redis://127.0.0.1:6379 ROUNDS=5 scripts/loadtest-sharing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
load_defaults
REDIS=${REDIS_URL:-redis://127.0.0.1:6379}
REDIS_HOSTPORT=${REDIS#redis://}

need_wrk
command -v redis-cli >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-tools; }
cargo build -q --release -p usage-sync-server --bin usage-sync
BIN=target/release/usage-sync
work_dir
# A limit far above what the run consumes: every consume is a shared
# decision (an unlimited kind would never reach Redis).
plan_file 1000000000
PORT=18530

redis_cmds() { redis-cli -h "${REDIS_HOSTPORT%:*}" -p "${REDIS_HOSTPORT#*:}" info stats | tr -d '\r' | awk -F: '/^total_commands_processed/{print $2}'; }

for ROUND in $(seq 1 "$ROUNDS"); do
  for MODE in none redis lease; do
    PORT=$((PORT + 1))
    USAGE_SYNC_DATA_DIR="$WORK/us-$MODE-$ROUND" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" USAGE_SYNC_VERBOSE_LOGGING=false \
      USAGE_SYNC_SHARING=$MODE REDIS_URL="$REDIS" USAGE_SYNC_REDIS_PREFIX="bench-$ROUND-$MODE-$$" \
      USAGE_SYNC_LOG_LEVEL=warn "$BIN" --config "$WORK/usage-sync.toml" serve 2>"$WORK/us.log" &
    PID=$!
    wait_http $PORT
    before=$(redis_cmds)
    line=$(wrk -t2 -c"$CONNS" -d"$DURATION" -s scripts/consume.lua "http://127.0.0.1:$PORT" | grep '^RESULT')
    after=$(redis_cmds)
    ops=$(curl -s "http://127.0.0.1:$PORT/admin/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sharing"].get("redis_operations", 0))')
    echo "$MODE $line own_ops=$ops redis_cmds=$((after - before))" >> "$WORK/raw"
    kill -TERM $PID; wait $PID || true
  done
done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); redis $(redis-cli -h "${REDIS_HOSTPORT%:*}" -p "${REDIS_HOSTPORT#*:}" info server | tr -d '\r' | awk -F: '/^redis_version/{print $2}') on loopback; wrk -t2 -c$CONNS -d$DURATION; $USERS users; median of $ROUNDS interleaved rounds"
python3 - "$WORK/raw" <<'PY'
import sys, statistics as st
runs = {}
for line in open(sys.argv[1]):
    mode, _, *kv = line.split()
    d = dict(p.split("=") for p in kv)
    req = int(d["requests"]); secs = int(d["duration_us"]) / 1e6
    runs.setdefault(mode, []).append(dict(rps=req / secs, p50=int(d["p50_us"]) / 1000, p99=int(d["p99_us"]) / 1000,
        errors=int(d["non2xx"]) + int(d["socket_errors"]), req=req, own=int(d["own_ops"]), cmds=int(d["redis_cmds"])))
print("\n| sharing mode | requests/s (median) | all rounds | × none | p50 ms | p99 ms | errors | Redis operations per consume (instance / Redis server) |")
print("|---|---|---|---|---|---|---|---|")
base = st.median(r["rps"] for r in runs["none"])
for m in ["none", "redis", "lease"]:
    r = runs[m]; rps = st.median(x["rps"] for x in r); req = sum(x["req"] for x in r)
    print(f"| {m} | {rps:,.0f} | {' / '.join(format(x['rps'], ',.0f') for x in r)} | {rps / base:.2f}× | {st.median(x['p50'] for x in r):.2f} | "
          f"{st.median(x['p99'] for x in r):.2f} | {sum(x['errors'] for x in r)} | {sum(x['own'] for x in r) / req:.3f} / {sum(x['cmds'] for x in r) / req:.3f} |")
PY

#!/usr/bin/env bash
# Load test of POST /v1/consume over loopback with keep-alive: usage-sync in
# each durability mode against the naive baseline (one SQLite UPDATE per
# request), same machine, same run. Servers are measured in ROUNDS
# interleaved rounds and the median of each is reported, because a shared
# 2-core VM varies by ±30 % between consecutive 10 s runs.
#
#   scripts/loadtest.sh                   # 3 rounds, 64 connections, 10 s, 10 000 users
#   ROUNDS=5 CONNS=128 DURATION=30s scripts/loadtest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
load_defaults
need_wrk
command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }
cargo build -q --release -p usage-sync-server -p usage-sync-naive --bin usage-sync --bin naive_baseline
BIN=target/release/usage-sync
BASE=target/release/naive_baseline
work_dir
plan_file unlimited
RESULTS="$WORK/results.tsv"
PORT=18430

# Ready: usage-sync's /readyz turns 200 only after recovery (requests
# before that get 503 by design); the baseline answers 404 there.
wait_port() { wait_http "$1" /readyz 404; }

# measure NAME PORT DB: runs wrk, then appends "NAME requests rps p50 p99 errors db tx" to RESULTS
measure() {
  local name=$1 port=$2 line
  line=$(wrk -t2 -c"$CONNS" -d"$DURATION" -s scripts/consume.lua "http://127.0.0.1:$port" | grep '^RESULT')
  echo "$name $line" >> "$WORK/raw"
}

for ROUND in $(seq 1 "$ROUNDS"); do
  for MODE in none batched fsync; do
    PORT=$((PORT + 1))
    USAGE_SYNC_DATA_DIR="$WORK/us-$MODE-$ROUND" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" USAGE_SYNC_VERBOSE_LOGGING=false \
      USAGE_SYNC_DURABILITY=$MODE USAGE_SYNC_LOG_LEVEL=warn "$BIN" --config "$WORK/usage-sync.toml" serve 2>"$WORK/us.log" &
    PID=$!
    wait_port $PORT
    measure "usage-sync,durability=$MODE" $PORT
    curl -s -XPOST "http://127.0.0.1:$PORT/admin/v1/sync" >/dev/null
    kill -TERM $PID; wait $PID || true
    DB="$WORK/us-$MODE-$ROUND/usage-sync.db"
    echo "usage-sync,durability=$MODE $(sqlite3 "$DB" 'SELECT COALESCE(SUM(used),0) FROM usage') $(sqlite3 "$DB" 'SELECT COUNT(*) FROM flushes')" >> "$WORK/db"
  done
  for SYNC in FULL NORMAL; do
    PORT=$((PORT + 1))
    "$BASE" $PORT "$WORK/base-$SYNC-$ROUND.db" $SYNC "$USERS" 2>"$WORK/base.log" &
    PID=$!
    wait_port $PORT
    measure "baseline,synchronous=$SYNC" $PORT
    kill $PID; wait $PID 2>/dev/null || true
    TOTAL=$(sqlite3 "$WORK/base-$SYNC-$ROUND.db" 'SELECT SUM(used) FROM usage')
    echo "baseline,synchronous=$SYNC $TOTAL $TOTAL" >> "$WORK/db"
  done
done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); wrk -t2 -c$CONNS -d$DURATION; $USERS users; median of $ROUNDS interleaved rounds"
python3 - "$WORK/raw" "$WORK/db" "$CONNS" <<'PY'
import sys, statistics as st
raw, dbf, conns = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs, dbs = {}, {}
for line in open(raw):
    name, _, *kv = line.split()
    d = dict(p.split("=") for p in kv)
    req = int(d["requests"]); secs = int(d["duration_us"]) / 1e6
    runs.setdefault(name, []).append((req / secs, int(d["p50_us"]) / 1000, int(d["p99_us"]) / 1000,
                                      int(d["non2xx"]) + int(d["socket_errors"]), req))
for line in open(dbf):
    name, total, tx = line.split()
    dbs.setdefault(name, []).append((int(total), int(tx)))
order = ["usage-sync,durability=none", "usage-sync,durability=batched", "usage-sync,durability=fsync",
         "baseline,synchronous=FULL", "baseline,synchronous=NORMAL"]
med = {}
print("\n| server | requests/s (median) | all rounds | p50 ms | p99 ms | errors | DB rows written / transactions per 1 M units | DB − acknowledged |")
print("|---|---|---|---|---|---|---|---|")
for n in order:
    r = runs[n]
    rps = st.median(x[0] for x in r); med[n] = rps
    acked = sum(x[4] for x in r); errors = sum(x[3] for x in r)
    total = sum(x[0] for x in dbs[n]); tx = sum(x[1] for x in dbs[n])
    slack = [d[0] - x[4] for d, x in zip(dbs[n], r)]
    print(f"| {n} | {rps:,.0f} | {' / '.join(f'{x[0]:,.0f}' for x in r)} | {st.median(x[1] for x in r):.2f} | "
          f"{st.median(x[2] for x in r):.2f} | {errors} | {tx / total * 1e6:,.0f} | {', '.join(map(str, slack))} (≤ {conns} each) |")
u = lambda m: med[f"usage-sync,durability={m}"]
b = lambda s: med[f"baseline,synchronous={s}"]
print(f"\ndurability modes against none: batched {u('batched')/u('none'):.2f}×, fsync {u('fsync')/u('none'):.2f}×")
print(f"like for like: fsync / baseline FULL {u('fsync')/b('FULL'):.1f}×; batched / baseline NORMAL {u('batched')/b('NORMAL'):.1f}×; "
      f"development default (batched) / baseline FULL {u('batched')/b('FULL'):.1f}×")
PY

#!/usr/bin/env bash
# A/B of two builds of usage-sync over HTTP, in one run on one machine:
# how a change to the server (a lever of the HTTP front) moves
# throughput and p99. wrk -t2, rounds interleaved (A, B, A, B, ...),
# medians reported with B's ratio to A.
#
#   git stash && cargo build --release -p usage-sync-server --bin usage-sync \
#     && cp target/release/usage-sync /tmp/us-A && git stash pop
#   cargo build --release -p usage-sync-server --bin usage-sync && cp target/release/usage-sync /tmp/us-B
#   scripts/ab-http.sh /tmp/us-A /tmp/us-B
#   ROUNDS=5 DURATION=10s MODES="none batched fsync" ...
#
# Workloads, each after a warm-up on the same server: POST /v1/consume for
# 10 000 users already touched, and the bare route (GET /healthz), in each
# durability mode of MODES (default: none batched), on the embedded
# SQLite store. Prints a markdown table; writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] && [ -x "$1" ] && [ -x "$2" ] || {
  echo "usage: $0 A_BINARY B_BINARY (two builds of usage-sync)" >&2
  exit 2
}
A=$1 B=$2
. scripts/lib.sh
load_defaults
MODES=${MODES:-none batched}
need_wrk
work_dir
plan_file 1000000000
PORT=18700

# start BINARY MODE: a fresh server on a new port; sets PID
start() { start_usage_sync "$1" "$2"; }
consume() { USERS=10000 wrk -t2 -c"$CONNS" -d"$1" -s scripts/consume.lua "http://127.0.0.1:$PORT" | grep '^RESULT'; }
bare() { GET_PATH=/healthz wrk -t2 -c"$CONNS" -d"$1" -s scripts/get.lua "http://127.0.0.1:$PORT" | grep '^RESULT'; }

for R in $(seq 1 "$ROUNDS"); do
  for M in $MODES; do
    for S in A B; do
      echo "round $R: $M $S" >&2
      BIN=$A
      [ "$S" = B ] && BIN=$B
      start "$BIN" "$M"
      consume "$WARMUP" >/dev/null
      echo "10 000 users, $M|$S|$(with_cpu "$PID" consume "$DURATION")" >> "$WORK/raw"
      bare "$WARMUP" >/dev/null
      echo "bare route, $M|$S|$(with_cpu "$PID" bare "$DURATION")" >> "$WORK/raw"
      stop
    done
  done
done

python3 - "$WORK/raw" "$ROUNDS" "$CONNS" "$DURATION" "$A" "$B" <<'PY'
import sys
sys.path.insert(0, "scripts")
from wrk_runs import read, med, trailer
raw, rounds, conns, duration, a, b = sys.argv[1:7]
runs = read(raw)
print(f"A = {a}, B = {b}; wrk -t2 -c{conns} -d{duration} after a warm-up, median of {rounds} interleaved rounds.\n")
print("CPU per request answered: the server's own (user + system), and in brackets the whole machine's busy time.\n")
print("| workload | A | B | B / A | server CPU per request, A → B |")
print("|---|---|---|---|---|")
cell = lambda xs: f"{med(xs, 'rps'):,.0f} req/s, p99 {med(xs, 'p99'):.2f} ms"
for work in dict.fromkeys(w for w, _ in runs):
    ra, rb = runs[(work, "A")], runs[(work, "B")]
    ca, cb = med(ra, 'cpu'), med(rb, 'cpu')
    print(f"| {work} | {cell(ra)} | {cell(rb)} | **{med(rb, 'rps') / med(ra, 'rps'):.2f}×** "
          f"| {ca:.2f} → {cb:.2f} µs (**{cb / ca:.2f}×**) "
          f"[{med(ra, 'busy'):.1f} → {med(rb, 'busy'):.1f}] |")
print("\n".join(trailer(runs)))
PY

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
CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-5s}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-none batched}
. scripts/lib.sh
need_wrk
work_dir
printf '[plans.free]\nlimits = { premium = 1000000000, fast = 1000000000 }\n' > "$WORK/usage-sync.toml"
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
      echo "10 000 users, $M|$S|$(consume "$DURATION")" >> "$WORK/raw"
      bare "$WARMUP" >/dev/null
      echo "bare route, $M|$S|$(bare "$DURATION")" >> "$WORK/raw"
      stop
    done
  done
done

python3 - "$WORK/raw" "$ROUNDS" "$CONNS" "$DURATION" "$A" "$B" <<'PY'
import sys, statistics as st
raw, rounds, conns, duration, a, b = sys.argv[1:7]
runs = {}
for line in open(raw):
    work, side, result = line.rstrip("\n").split("|")
    d = dict(p.split("=") for p in result.split()[1:])
    runs.setdefault(work, {}).setdefault(side, []).append(dict(
        rps=int(d["requests"]) / (int(d["duration_us"]) / 1e6),
        p99=int(d["p99_us"]) / 1000,
        err=int(d["non2xx"]) + int(d["socket_errors"])))
med = lambda xs, f: st.median(x[f] for x in xs)
print(f"A = {a}, B = {b}; wrk -t2 -c{conns} -d{duration} after a warm-up, median of {rounds} interleaved rounds.\n")
print("| workload | A | B | B / A |")
print("|---|---|---|---|")
for work, sides in runs.items():
    ra, rb = sides["A"], sides["B"]
    cell = lambda xs: f"{med(xs, 'rps'):,.0f} req/s, p99 {med(xs, 'p99'):.2f} ms"
    print(f"| {work} | {cell(ra)} | {cell(rb)} | **{med(rb, 'rps') / med(ra, 'rps'):.2f}×** |")
errors = {f"{w} {s}": sum(x["err"] for x in xs) for w, sides in runs.items() for s, xs in sides.items() if sum(x["err"] for x in xs)}
print("\nNon-2xx answers and socket errors: " + (", ".join(f"{k}: {v}" for k, v in errors.items()) or "none") + ".")
print("\nAll rounds, requests/s:\n")
for work, sides in runs.items():
    for s, xs in sides.items():
        print(f"- {work}, {s}: " + " / ".join(f"{x['rps']:,.0f}" for x in xs))
PY

#!/usr/bin/env bash
# usage-sync's HTTP front against limitador-server (memory storage), the
# server users would pick instead, in one run on one machine: wrk -t2, the
# same random-user workload on POST /v1/consume and on limitador's
# POST /check_and_report, rounds interleaved, medians reported as ratios.
#
#   scripts/build-limitador.sh /tmp/limitador      # once (see that script)
#   LIMITADOR_BIN=/tmp/limitador/target/release/limitador-server scripts/bench-limitador.sh
#   ROUNDS=1 DURATION=5s ...                        # quicker, noisier
#
# Workloads, each after a warm-up on the same server:
#   - 10 000 users and 100 000 users, every user already touched;
#   - cold users: every request a user's first (a fresh server, users in
#     order from a space of 10 M). usage-sync reads the user's row from
#     its store before answering; limitador-server has no store to read.
#   - the bare route: GET /healthz against limitador's GET /status, the
#     HTTP stack's own cost.
# usage-sync runs in each durability mode (none, batched, fsync) on its
# embedded SQLite store. Writes docs/bench/limitador.md. Called by
# scripts/bench.sh; without LIMITADOR_BIN it says so and measures nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LIMITADOR_BIN:-}" ]; then
  echo "SKIPPED: the limitador-server comparison needs LIMITADOR_BIN, the path of a limitador-server binary (build one with scripts/build-limitador.sh); nothing was measured" >&2
  exit 0
fi
[ -x "$LIMITADOR_BIN" ] || { echo "LIMITADOR_BIN=$LIMITADOR_BIN is not an executable file" >&2; exit 1; }
CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-5s}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-docs/bench/limitador.md}
mkdir -p "$(dirname "$OUT")"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

cargo build -q --release -p usage-sync-server --bin usage-sync
BIN=target/release/usage-sync
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
printf '[plans.free]\nlimits = { premium = 1000000000, fast = 1000000000 }\n' > "$WORK/usage-sync.toml"
# One limit per user, never reached: a month, a billion units.
cat > "$WORK/limits.yaml" <<'YAML'
- namespace: bench
  max_value: 1000000000
  seconds: 2592000
  conditions: []
  variables:
    - descriptors[0].user
YAML
PORT=18800

wait_http() {
  for _ in $(seq 1 400); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT$1" || true)" = 200 ] && return 0
    sleep 0.05
  done
  echo "server on port $PORT did not answer $1" >&2; exit 1
}
# start TARGET: a fresh server on a new port; sets PID
start() {
  PORT=$((PORT + 1))
  if [ "$1" = limitador ]; then
    "$LIMITADOR_BIN" --http-ip 127.0.0.1 --http-port "$PORT" --rls-ip 127.0.0.1 --rls-port $((PORT + 500)) \
      "$WORK/limits.yaml" memory 2>>"$WORK/limitador.log" >&2 &
    PID=$!
    wait_http /status
  else
    USAGE_SYNC_DURABILITY=$1 USAGE_SYNC_DATA_DIR="$WORK/d-$PORT" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" \
      USAGE_SYNC_LOG_LEVEL=warn USAGE_SYNC_VERBOSE_LOGGING=false \
      "$BIN" --config "$WORK/usage-sync.toml" serve 2>>"$WORK/us.log" &
    PID=$!
    wait_http /readyz
  fi
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }
# load TARGET DURATION USERS SEQ: wrk's RESULT line for the target's route
load() {
  local lua=consume.lua
  [ "$1" = limitador ] && lua=check_and_report.lua
  USERS=$3 SEQ=$4 wrk -t2 -c"$CONNS" -d"$2" -s "scripts/$lua" "http://127.0.0.1:$PORT" | grep '^RESULT'
}
bare() {
  local path=/healthz
  [ "$1" = limitador ] && path=/status
  GET_PATH=$path wrk -t2 -c"$CONNS" -d"$2" -s scripts/get.lua "http://127.0.0.1:$PORT" | grep '^RESULT'
}
record() { echo "$1|$2|$3" >> "$WORK/raw"; }

for R in $(seq 1 "$ROUNDS"); do
  for T in limitador none batched fsync; do
    echo "round $R: $T" >&2
    start "$T"
    load "$T" "$WARMUP" 10000 0 >/dev/null
    record "10 000 users" "$T" "$(load "$T" "$DURATION" 10000 0)"
    # Users in order first, so all 100 000 are touched before measuring.
    load "$T" "$WARMUP" 100000 1 >/dev/null
    load "$T" "$WARMUP" 100000 1 >/dev/null
    record "100 000 users" "$T" "$(load "$T" "$DURATION" 100000 0)"
    bare "$T" "$WARMUP" >/dev/null
    record "bare route" "$T" "$(bare "$T" "$DURATION")"
    stop
    # Cold: a fresh server, every request a user it has never seen.
    start "$T"
    record "cold users (first touch)" "$T" "$(load "$T" "$DURATION" 10000000 1)"
    stop
  done
done

MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), Linux $(uname -r); wrk on the same cores"
python3 - "$WORK/raw" "$OUT" "$MACHINE" "$ROUNDS" "$CONNS" "$DURATION" <<'PY'
import sys, statistics as st, datetime
raw, out, machine, rounds, conns, duration = sys.argv[1:7]
runs = {}
for line in open(raw):
    work, target, result = line.rstrip("\n").split("|")
    d = dict(p.split("=") for p in result.split()[1:])
    secs = int(d["duration_us"]) / 1e6
    runs.setdefault((work, target), []).append(dict(
        rps=int(d["requests"]) / secs, p99=int(d["p99_us"]) / 1000,
        err=int(d["non2xx"]) + int(d["socket_errors"])))
works = ["10 000 users", "100 000 users", "cold users (first touch)", "bare route"]
modes = ["none", "batched", "fsync"]
med = lambda k, f: st.median(x[f] for x in runs[k])
L = [f"Generated by `scripts/bench-limitador.sh` on {datetime.date.today()}; do not edit by hand. "
     f"Machine: {machine}. wrk -t2 -c{conns} -d{duration} after a warm-up, median of {rounds} interleaved rounds.\n",
     "| workload | limitador-server (memory) | usage-sync `none` | `batched` | `fsync` |",
     "|---|---|---|---|---|"]
for w in works:
    lim = (w, "limitador")
    cells = [f"{med(lim, 'rps'):,.0f} req/s, p99 {med(lim, 'p99'):.1f} ms"]
    for m in modes:
        k = (w, m)
        cells.append(f"**{med(k, 'rps') / med(lim, 'rps'):.2f}×** ({med(k, 'rps'):,.0f}/s), p99 {med(k, 'p99'):.1f} ms")
    L.append(f"| {w} | " + " | ".join(cells) + " |")
errors = {f"{w} / {t}": sum(x["err"] for x in v) for (w, t), v in runs.items() if sum(x["err"] for x in v)}
L.append("\nNon-2xx answers and socket errors: " + (", ".join(f"{k}: {v}" for k, v in errors.items()) or "none") + ".")
L.append("\nAll rounds, requests/s:\n")
for (w, t), v in runs.items():
    L.append(f"- {w}, {t}: " + " / ".join(f"{x['rps']:,.0f}" for x in v))
open(out, "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY

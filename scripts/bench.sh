#!/usr/bin/env bash
# The side-by-side benchmark suite, one command, one run, one machine:
#   1. in-process consume against the limitador crate and the floor;
#   2. scaling of the sync engine's passes with users tracked, memory per user;
#   3. HTTP: usage-sync (durability and sharing modes, hot row) against one
#      SQLite UPDATE per request (FULL, NORMAL), one PostgreSQL UPDATE per
#      request (10 000 users, one hot row) and one Redis round trip per
#      request; requests/s, p50/p99, database statements per million units;
#   4. ingest through POST /v1/consume/batch;
#   5. throughput against connection count;
#   6. the HTTP front against limitador-server (scripts/bench-limitador.sh:
#      needs LIMITADOR_BIN, and says it skipped when it is unset).
# Writes docs/benchmarks-suite.md, docs/bench/limitador.md and PNG charts
# under docs/bench/.
#
#   scripts/bench.sh                # ~15 minutes on 2 cores
#   ROUNDS=1 DURATION=5s scripts/bench.sh   # quicker, noisier
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
load_defaults
PG=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# usage-sync's own tables go to a database of their own.
US_PG="${PG%/*}/usage_sync_bench"
REDIS=${REDIS_URL:-redis://127.0.0.1:6379}
OUT=docs/benchmarks-suite.md
mkdir -p docs/bench

for tool in wrk sqlite3 redis-cli psql; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk sqlite3 redis-tools postgresql-client; break; }
done
psql "$PG" -qc 'CREATE DATABASE usage_sync_bench' 2>/dev/null || true
[ -x .ci/plot-venv/bin/python ] || { python3 -m venv .ci/plot-venv && .ci/plot-venv/bin/pip install -q matplotlib==3.9.2; }

echo "building..." >&2
cargo build -q --release -p usage-sync-server -p usage-sync-naive --bin usage-sync --bin naive_baseline --bin naive_postgres --bin naive_redis
cargo build -q --release --manifest-path bench/compare/Cargo.toml
BIN=target/release/usage-sync
EX=target/release
work_dir
plan_file 1000000000
PORT=18700

echo "1/6 in-process (limitador, floor)..." >&2
bench/compare/target/release/usage-sync-compare > "$WORK/compare.txt"
echo "2/6 scaling..." >&2
cargo bench -q -p usage-sync-core --bench scaling 2>/dev/null | grep '^|' > "$WORK/scaling.txt"

wait_ready() { wait_http "$1" /readyz 404; }
# run NAME USERS CONNS LUA: wrk against $PORT, appends to raw
run() {
  local line
  line=$(USERS=$2 wrk -t2 -c"$3" -d"$DURATION" -s "scripts/$4" "http://127.0.0.1:$PORT" | grep '^RESULT')
  echo "$1 $line" >> "$WORK/raw"
}
# usage-sync NAME USERS CONNS LUA [ENV...]: start, run, flush, record statements
usage_sync() {
  local name=$1 users=$2 conns=$3 lua=$4; shift 4
  PORT=$((PORT + 1))
  env "$@" USAGE_SYNC_DATA_DIR="$WORK/d-$PORT" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" USAGE_SYNC_LOG_LEVEL=warn \
    USAGE_SYNC_VERBOSE_LOGGING=false USAGE_SYNC_REDIS_PREFIX="bench-$PORT-$$" \
    "$BIN" --config "$WORK/usage-sync.toml" serve 2>>"$WORK/us.log" &
  local pid=$!
  wait_ready $PORT
  run "$name" "$users" "$conns" "$lua"
  curl -s -XPOST "http://127.0.0.1:$PORT/admin/v1/sync" >/dev/null
  curl -s "http://127.0.0.1:$PORT/admin/v1/status" | python3 -c "import json,sys; s=json.load(sys.stdin)['sync']; print('$name', s['units_flushed'], s['flushes'], s['rows_written'])" >> "$WORK/stmts"
  kill -TERM $pid; wait $pid || true
}
baseline() {
  local name=$1 users=$2; shift 2
  PORT=$((PORT + 1))
  "$@" 2>>"$WORK/base.log" &
  local pid=$!
  wait_ready $PORT
  run "$name" "$users" "$CONNS" consume.lua
  kill $pid; wait $pid 2>/dev/null || true
}

echo "3/6 HTTP, $ROUNDS interleaved rounds..." >&2
for R in $(seq 1 "$ROUNDS"); do
  usage_sync "usage-sync fsync" 10000 "$CONNS" consume.lua USAGE_SYNC_DURABILITY=fsync
  usage_sync "usage-sync batched" 10000 "$CONNS" consume.lua USAGE_SYNC_DURABILITY=batched
  usage_sync "usage-sync batched, one hot user" 1 "$CONNS" consume.lua USAGE_SYNC_DURABILITY=batched
  usage_sync "usage-sync redis mode" 10000 "$CONNS" consume.lua USAGE_SYNC_SHARING=redis REDIS_URL="$REDIS"
  usage_sync "usage-sync lease mode" 10000 "$CONNS" consume.lua USAGE_SYNC_SHARING=lease REDIS_URL="$REDIS"
  usage_sync "usage-sync on PostgreSQL" 10000 "$CONNS" consume.lua DATABASE_URL="$US_PG" USAGE_SYNC_DB_POOL_SIZE=4
  baseline "SQLite UPDATE per request, FULL" 10000 sh -c "exec $EX/naive_baseline \$0 $WORK/b-full-$R.db FULL 10000" $((PORT + 1))
  baseline "SQLite UPDATE per request, NORMAL" 10000 sh -c "exec $EX/naive_baseline \$0 $WORK/b-norm-$R.db NORMAL 10000" $((PORT + 1))
  baseline "PostgreSQL UPDATE per request" 10000 sh -c "exec $EX/naive_postgres \$0 $PG 10000 16" $((PORT + 1))
  baseline "PostgreSQL UPDATE per request, one hot row" 1 sh -c "exec $EX/naive_postgres \$0 $PG 1 16" $((PORT + 1))
  baseline "Redis Lua round trip per request" 10000 sh -c "exec $EX/naive_redis \$0 $REDIS 1000000000" $((PORT + 1))
done

echo "4/6 ingest..." >&2
for R in $(seq 1 "$ROUNDS"); do
  usage_sync "batch ingest (1000 events per request)" 10000 8 batch.lua USAGE_SYNC_DURABILITY=batched
done
echo "5/6 connections..." >&2
for C in 8 64 256; do
  usage_sync "usage-sync batched, $C connections" 10000 "$C" consume.lua USAGE_SYNC_DURABILITY=batched
done

MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r), PostgreSQL $(psql "$PG" -tAc 'show server_version' 2>/dev/null || echo '?'), Redis $(redis-cli -u "$REDIS" info server | tr -d '\r' | awk -F: '/^redis_version/{print $2}'); load generator on the same cores"
.ci/plot-venv/bin/python - "$WORK" "$OUT" "$MACHINE" "$ROUNDS" "$CONNS" "$DURATION" <<'PY'
import sys, json, statistics as st, datetime
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
work, out, machine, rounds, conns, duration = sys.argv[1:7]
runs = {}
for line in open(f"{work}/raw"):
    head, rest = line.split(" RESULT ")
    d = dict(p.split("=") for p in rest.split())
    req = int(d["requests"]); secs = int(d["duration_us"]) / 1e6
    runs.setdefault(head, []).append(dict(rps=req/secs, p50=int(d["p50_us"])/1000, p99=int(d["p99_us"])/1000,
                                          err=int(d["non2xx"]) + int(d["socket_errors"])))
stm = {}
for line in open(f"{work}/stmts"):
    parts = line.rsplit(" ", 3); name = parts[0]
    units, flushes, rows = map(int, parts[1:])
    a = stm.setdefault(name, [0, 0, 0]); a[0] += units; a[1] += flushes; a[2] += rows
med = {k: st.median(x["rps"] for x in v) for k, v in runs.items()}
L = []
L.append("# Benchmark suite (generated)\n")
L.append(f"Generated by `scripts/bench.sh` on {datetime.date.today()}; do not edit by hand. "
         f"Machine: {machine}. HTTP: wrk -t2 -c{conns} -d{duration}, median of {rounds} interleaved rounds; "
         "every server on loopback. Read the ratios, not the absolutes: see docs/benchmarks.md for the discussion.\n")
L.append("## 1. In-process check-and-count\n")
compare = open(f"{work}/compare.txt").read()
L.append("\n".join(l for l in compare.splitlines() if l.startswith("|")) + "\n")
cmp_json = json.loads(compare.split("JSON ", 1)[1])
L.append("## 2. Scaling with users tracked\n")
L.append(open(f"{work}/scaling.txt").read())
L.append("\n## 3. HTTP, like against like\n")
L.append("| server | requests/s (median) | all rounds | p50 ms | p99 ms | errors | database transactions per 1 M units (rows written) |")
L.append("|---|---|---|---|---|---|---|")
http = [k for k in runs if not k.startswith("batch") and "connections" not in k]
for k in http:
    v = runs[k]
    if k in stm and stm[k][0] > 0:
        units, flushes, rows = stm[k]
        # One flush is one transaction: the flush id insert, then the
        # upsert (on PostgreSQL one UNNEST statement; on SQLite, in process,
        # up to 8 cached multi-row statements).
        s = f"{flushes / units * 1e6:,.0f} ({rows / units * 1e6:,.0f} rows)"
    else:
        s = "1,000,000 (autocommit: one statement per unit)"
    L.append(f"| {k} | {med[k]:,.0f} | {' / '.join(format(x['rps'], ',.0f') for x in v)} | "
             f"{st.median(x['p50'] for x in v):.2f} | {st.median(x['p99'] for x in v):.2f} | {sum(x['err'] for x in v)} | {s} |")
def ratio(a, b):
    return med[a] / med[b] if a in med and b in med else float("nan")
L.append("\nRatios (goals in brackets):\n")
for a, b, t in [("usage-sync fsync", "SQLite UPDATE per request, FULL", "≥ 10×"),
                ("usage-sync batched", "SQLite UPDATE per request, NORMAL", "≥ 2×"),
                ("usage-sync on PostgreSQL", "PostgreSQL UPDATE per request", "≥ 8×"),
                ("usage-sync batched, one hot user", "PostgreSQL UPDATE per request, one hot row", "≥ 40×"),
                ("usage-sync batched", "Redis Lua round trip per request", "≥ 1.5×"),
                ("usage-sync redis mode", "usage-sync batched", "reported"),
                ("usage-sync lease mode", "usage-sync batched", "reported")]:
    L.append(f"- {a} / {b}: **{ratio(a, b):.1f}×** [{t}]")
t = stm.get("usage-sync on PostgreSQL")
if t and t[0]:
    # A PostgreSQL flush is one statement (a CTE: flush id insert, then the
    # UNNEST upsert) in an implicit transaction; a re-sent batch whose id
    # is already there adds one SELECT (none happen in this run).
    L.append(f"- usage-sync on PostgreSQL: {t[1] / t[0] * 1e6:,.0f} statements per 1 M units "
             f"(one per flush), **1/{1e6 / (t[1] / t[0] * 1e6):,.0f}** of one UPDATE per request [≤ 1/1000]")
L.append("\n## 4. Ingest through `POST /v1/consume/batch`\n")
for k, v in runs.items():
    if k.startswith("batch"):
        L.append(f"- {k}, 8 connections: **{st.median(x['rps'] for x in v) * 1000:,.0f} events/s** "
                 f"(rounds: {' / '.join(format(x['rps'] * 1000, ',.0f') for x in v)}), p99 {st.median(x['p99'] for x in v):.1f} ms per request")
L.append("\n## 5. Throughput against connections\n")
L.append("| connections | requests/s | p50 ms | p99 ms |")
L.append("|---|---|---|---|")
conn_rows = []
for k, v in runs.items():
    if "connections" in k:
        c = int(k.split(", ")[1].split()[0]); conn_rows.append((c, v[0]))
for c, x in sorted(conn_rows):
    L.append(f"| {c} | {x['rps']:,.0f} | {x['p50']:.2f} | {x['p99']:.2f} |")
L.append("\n## Charts\n")
L.append("![in-process](bench/in-process.png)\n\n![http](bench/http.png)\n\n![connections](bench/connections.png)\n")
open(out, "w").write("\n".join(L) + "\n")

# Charts
fig, ax = plt.subplots(figsize=(9, 4.5))
labels = [f"{'hot user' if r['users'] == 1 else '100k users'}, {r['threads']}t" for r in cmp_json]
w = 0.2
for i, (key, name) in enumerate([("usage_sync", "usage-sync"), ("limitador", "limitador"), ("dashmap", "DashMap"), ("atomic", "AtomicU64")]):
    ax.bar([j + i * w for j in range(len(cmp_json))], [r[key] / 1e6 for r in cmp_json], w, label=name)
ax.set_yscale("log"); ax.set_ylabel("million operations/s (log)"); ax.set_xticks([j + 1.5 * w for j in range(len(cmp_json))], labels)
ax.set_title("In-process check-and-count"); ax.legend(); fig.tight_layout(); fig.savefig("docs/bench/in-process.png", dpi=110)
fig, ax = plt.subplots(figsize=(10, 5))
names = sorted(http, key=lambda k: med[k])
ax.barh(names, [med[k] for k in names], color=["#2b7bba" if k.startswith("usage-sync") else "#999999" for k in names])
# Bars start at 0 on a linear axis: on a log axis their lengths mislead.
ax.set_xlim(left=0); ax.set_xlabel("requests/s (median)"); ax.set_title(f"HTTP POST /v1/consume, {conns} connections")
fig.tight_layout(); fig.savefig("docs/bench/http.png", dpi=110)
fig, ax = plt.subplots(figsize=(6, 4))
xs = [c for c, _ in sorted(conn_rows)]; ys = [x["rps"] for _, x in sorted(conn_rows)]
ax.plot(xs, ys, marker="o"); ax.set_xscale("log", base=2); ax.set_ylim(bottom=0); ax.set_xlabel("connections"); ax.set_ylabel("requests/s")
ax.set_title("usage-sync (batched): throughput against connections"); fig.tight_layout(); fig.savefig("docs/bench/connections.png", dpi=110)
print(open(out).read())
PY
echo "6/6 against limitador-server..." >&2
scripts/bench-limitador.sh

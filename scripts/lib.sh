# Shared by the benchmark and load-test scripts: `. scripts/lib.sh` from the
# repository root.

# load_defaults: the load every comparison applies unless the environment
# says otherwise (wrk -t2 -c$CONNS, $DURATION after a $WARMUP warm-up,
# $ROUNDS interleaved rounds, $USERS random users).
load_defaults() {
  CONNS=${CONNS:-64}
  DURATION=${DURATION:-10s}
  WARMUP=${WARMUP:-5s}
  ROUNDS=${ROUNDS:-3}
  export USERS=${USERS:-10000}
}

# plan_file LIMIT: $WORK/usage-sync.toml, whose free plan allows LIMIT
# (a number, or unlimited) of each kind.
plan_file() {
  local v=$1
  [ "$v" = unlimited ] && v='"unlimited"'
  printf '[plans.free]\nlimits = { premium = %s, fast = %s }\n' "$v" "$v" > "$WORK/usage-sync.toml"
}

# need_wrk: installs wrk (Debian) if it is missing.
need_wrk() {
  command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
}

# work_dir: a scratch directory in $WORK, removed (and every background job
# killed) when the script exits.
work_dir() {
  WORK=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# wait_http PORT [PATH] [ALSO_OK]: waits up to 20 s for PATH (default
# /readyz, which turns 200 only after recovery) to answer 200, or ALSO_OK
# (the naive baselines answer 404 there, which is "up" for them). Exits
# the script if it never does.
wait_http() {
  local port=$1 path=${2:-/readyz} also=${3:-200} code
  for _ in $(seq 1 400); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path" || true)
    [ "$code" = 200 ] || [ "$code" = "$also" ] && return 0
    sleep 0.05
  done
  echo "the server on port $port did not answer $path in 20 s" >&2
  [ -n "${SERVER_LOG:-}" ] && [ -f "$SERVER_LOG" ] && tail -20 "$SERVER_LOG" >&2
  exit 1
}

# start_usage_sync BIN MODE: BIN serving on the next port (PORT is bumped)
# in durability MODE, with $WORK/usage-sync.toml, quiet logs appended to
# $WORK/us.log (shown if it never gets ready) and its own data dir; sets
# PID once it is ready.
start_usage_sync() {
  SERVER_LOG="$WORK/us.log"
  PORT=$((PORT + 1))
  USAGE_SYNC_DURABILITY=$2 USAGE_SYNC_DATA_DIR="$WORK/d-$PORT" USAGE_SYNC_LISTEN="127.0.0.1:$PORT" \
    USAGE_SYNC_LOG_LEVEL=warn USAGE_SYNC_VERBOSE_LOGGING=false \
    "$1" --config "$WORK/usage-sync.toml" serve 2>>"$WORK/us.log" &
  PID=$!
  wait_http "$PORT"
}

# cpu_us PID: the CPU time (user + system, all its threads) PID has used
# so far, in microseconds.
cpu_us() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%d\n", ($14 + $15) * 1000000 / hz }' "/proc/$1/stat"; }

# busy_us: the CPU time every core of the machine has spent not idle so
# far (every process, the kernel's own work included), in microseconds.
busy_us() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%d\n", ($2 + $3 + $4 + $7 + $8) * 1000000 / hz }' /proc/stat; }

# with_cpu PID COMMAND...: runs COMMAND, which prints one RESULT line, and
# adds to it the CPU time PID spent meanwhile per request answered
# (server_cpu_ns=...), and the machine's (busy_cpu_ns=...: the server, the
# load generator and everything else). The server's own cost of a
# request is what the load generator sharing the cores blurs in
# requests/s.
with_cpu() {
  local pid=$1 before after busy0 busy1 line n
  shift
  before=$(cpu_us "$pid")
  busy0=$(busy_us)
  line=$("$@")
  after=$(cpu_us "$pid")
  busy1=$(busy_us)
  n=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")
  n=${n:-0}
  [ "$n" -gt 0 ] || n=1
  echo "$line server_cpu_ns=$(((after - before) * 1000 / n)) busy_cpu_ns=$(((busy1 - busy0) * 1000 / n))"
}

# stop: SIGTERM to PID, and wait for it.
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }

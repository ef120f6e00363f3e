-- Shared by the wrk scripts (loaded with dofile, so wrk runs from the
-- repository's root): the RESULT line each prints, and the users a
-- request is for.
--
-- USERS (default 10 000) users, `user-0` to `user-<USERS-1>`, picked at
-- random; with SEQ=1 in order instead (each of wrk's two threads its own
-- share, `-t2`), so a run of fewer than USERS requests touches each user
-- at most once.

local users = tonumber(os.getenv("USERS") or "10000")
local seq = os.getenv("SEQ") == "1"
-- `id` is each thread's number, set by setup() in the thread's state.
local next_id, n = 0, 0

setup = function(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

init = function(args)
  math.randomseed(os.time() + (id or 0))
end

function pick_user()
  if seq then
    n = n + 1
    return ((n - 1) * 2 + (id or 0)) % users
  end
  return math.random(0, users - 1)
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end

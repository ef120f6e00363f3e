-- wrk script: limitador-server's POST /check_and_report for a user out of
-- USERS (default 10 000), the same workload as consume.lua. With SEQ=1
-- the users are taken in order (each thread its own share), so a run of
-- fewer than USERS requests touches each user at most once.
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
request = function()
  local u
  if seq then
    u = (n * 2 + (id or 0)) % users
    n = n + 1
  else
    u = math.random(0, users - 1)
  end
  local body = '{"namespace":"bench","values":{"user":"user-' .. u .. '"},"delta":1}'
  return wrk.format("POST", "/check_and_report", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end

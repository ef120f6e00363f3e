-- wrk script: POST /v1/consume/batch with EVENTS (default 1000) events for
-- random users out of USERS, kind "fast". Prints one RESULT line.
local users = tonumber(os.getenv("USERS") or "10000")
local events = tonumber(os.getenv("EVENTS") or "1000")
math.randomseed(os.time())
request = function()
  local parts = {}
  for i = 1, events do
    parts[i] = '{"user_id":"user-' .. math.random(0, users - 1) .. '","kind":"fast"}'
  end
  local body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/consume/batch", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end

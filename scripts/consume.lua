-- wrk script: POST /v1/consume for a random user out of USERS (default
-- 10 000), kind "fast". Prints one machine-readable RESULT line.
local users = tonumber(os.getenv("USERS") or "10000")
math.randomseed(os.time())
request = function()
  local body = '{"user_id":"user-' .. math.random(0, users - 1) .. '","kind":"fast"}'
  return wrk.format("POST", "/v1/consume", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end

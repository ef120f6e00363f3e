-- wrk script: GET PATH (a route that does nothing: the HTTP stack's own
-- cost). Prints one machine-readable RESULT line.
local path = os.getenv("GET_PATH") or "/healthz"
request = function()
  return wrk.format("GET", path)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end

-- wrk script: POST /v1/consume/batch with EVENTS (default 1000) events for
-- random users (see wrk-common.lua), kind "fast". Prints one RESULT line.
dofile("scripts/wrk-common.lua")
local events = tonumber(os.getenv("EVENTS") or "1000")
request = function()
  local parts = {}
  for i = 1, events do
    parts[i] = '{"user_id":"user-' .. pick_user() .. '","kind":"fast"}'
  end
  local body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/consume/batch", {["Content-Type"] = "application/json"}, body)
end

-- wrk script: POST /v1/consume for a user (see wrk-common.lua), kind
-- "fast". Prints one machine-readable RESULT line.
dofile("scripts/wrk-common.lua")
request = function()
  local body = '{"user_id":"user-' .. pick_user() .. '","kind":"fast"}'
  return wrk.format("POST", "/v1/consume", {["Content-Type"] = "application/json"}, body)
end

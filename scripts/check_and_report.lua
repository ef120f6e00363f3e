-- wrk script: limitador-server's POST /check_and_report for a user (see
-- wrk-common.lua): the same workload as consume.lua.
dofile("scripts/wrk-common.lua")
request = function()
  local body = '{"namespace":"bench","values":{"user":"user-' .. pick_user() .. '"},"delta":1}'
  return wrk.format("POST", "/check_and_report", {["Content-Type"] = "application/json"}, body)
end

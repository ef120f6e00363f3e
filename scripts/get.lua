-- wrk script: GET PATH (a route that does nothing: the HTTP stack's own
-- cost). Prints one machine-readable RESULT line.
dofile("scripts/wrk-common.lua")
local path = os.getenv("GET_PATH") or "/healthz"
request = function()
  return wrk.format("GET", path)
end

-- One normal-lane webhook notification per request, as in issue 14.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("HERALD_KEY")
local hooks = os.getenv("HOOKS")
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function request()
  counter = counter + 1
  local n = tid * 100000000 + counter
  local body = '{"priority":"normal","channels":["webhook"],"recipient":{"webhook_url":"' .. hooks .. '/hooks/wrk/' .. n .. '"},"content":{"subject":"order.shipped","text":"Order A-' .. n .. ' shipped"}}'
  return wrk.format(nil, "/v1/notifications", nil, body)
end
local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  io.write(string.format("p50 %.2f ms  p99 %.2f ms\n", latency:percentile(50)/1000, latency:percentile(99)/1000))
end

-- wrk script for the case endpoints (real app and bare baseline alike).
--
--   wrk -t2 -c4 -d20s --latency -s bench/cases.lua http://127.0.0.1:8801 -- MODE DATA TOKEN
--
-- MODE  get | post | search | list
-- DATA  a file with one item per line, picked at random per request: case ids (get),
--       JSON bodies (post), URL-encoded names (search); "-" for list
-- TOKEN a file holding a bearer token for the Authorization header; "-" for none (bare)
--
-- At the end it prints one line `BENCH_JSON {...}` with the counts and latency percentiles
-- (microseconds) that bench/run.py reads.

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
  table.insert(threads, thread)
end

local mode = "list"
local items = {}
local headers = {}

local function read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if #line > 0 then
      lines[#lines + 1] = line
    end
  end
  return lines
end

function init(args)
  mode = args[1] or "list"
  local data, token = args[2], args[3]
  if data and data ~= "-" then
    items = read_lines(data)
  end
  if token and token ~= "-" then
    local file = assert(io.open(token, "r"))
    headers["Authorization"] = "Bearer " .. file:read("*l")
    file:close()
  end
  if mode == "post" then
    headers["Content-Type"] = "application/json"
  end
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
  for _ = 1, 10 do
    math.random()
  end
end

function request()
  if mode == "list" then
    return wrk.format("GET", "/api/v1/cases?limit=50", headers)
  end
  local item = items[math.random(#items)]
  if mode == "get" then
    return wrk.format("GET", "/api/v1/cases/" .. item, headers)
  elseif mode == "post" then
    return wrk.format("POST", "/api/v1/cases", headers, item)
  elseif mode == "search" then
    return wrk.format("GET", "/api/v1/cases?name=" .. item, headers)
  end
  error("unknown mode " .. tostring(mode))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,'
      .. '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean
  ))
end

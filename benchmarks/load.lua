-- wrk script for benchmarks/wrkload.py: POST one fixed body, check every response, count the
-- answers that arrive inside the measured window.
--
--   wrk -t1 -cN -d1h --timeout 120s -s load.lua URL -- BODY_FILE CONTENT_TYPE SIGNALS \
--       WINDOW_START WINDOW_END [EXPECTED_FILE [NEEDLE COUNT]]
--
-- WINDOW_START / WINDOW_END are CLOCK_MONOTONIC seconds (Python's time.monotonic()); the run is
-- stopped by SIGINT after WINDOW_END, so every answer counted arrived in steady state and none
-- in flight at the end is lost from the count. A response is correct if it is 200 and either
-- byte-identical to EXPECTED_FILE (an answer the harness checked in full) or holds NEEDLE
-- COUNT times (default: '"peaks"', once per signal sent). done() prints one line of JSON, then
-- the first problem seen.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local CLOCK_MONOTONIC = 1

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per-thread counters (globals: done() reads them with thread:get).
ok, bad, identical, in_window, example = 0, 0, 0, 0, ""
local signals, window_start, window_end, expected, needle, needed

local function read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  wrk.method = "POST"
  wrk.body = read(args[1])
  wrk.headers["Content-Type"] = args[2]
  signals = tonumber(args[3])
  window_start = tonumber(args[4])
  window_end = tonumber(args[5])
  if args[6] and args[6] ~= "" then
    expected = read(args[6])
  end
  needle = args[7] or '"peaks"'
  needed = tonumber(args[8]) or signals
end

local function count(body, needle)
  local n, pos = 0, 1
  while true do
    local _, stop = string.find(body, needle, pos, true)
    if not stop then
      return n
    end
    n, pos = n + 1, stop + 1
  end
end

function response(status, headers, body)
  local problem
  body = body or ""
  if status ~= 200 then
    problem = "HTTP " .. status .. ": " .. string.sub(body, 1, 200)
  elseif expected ~= nil and body == expected then
    identical = identical + 1
  else
    local found = count(body, needle)
    if found ~= needed then
      problem = "HTTP 200 with " .. found .. " " .. needle .. " for " .. signals .. " signals: " .. string.sub(body, 1, 200)
    end
  end
  if problem then
    bad = bad + 1
    if example == "" then
      example = problem
    end
    return
  end
  ok = ok + 1
  local t = now()
  if t >= window_start and t < window_end then
    in_window = in_window + 1
  end
end

function done(summary, latency, requests)
  local total = { ok = 0, bad = 0, identical = 0, in_window = 0 }
  local first = ""
  for _, thread in ipairs(threads) do
    for key, _ in pairs(total) do
      total[key] = total[key] + thread:get(key)
    end
    if first == "" then
      first = thread:get("example")
    end
  end
  local e = summary.errors
  io.write(string.format(
    '{"responses": %d, "ok": %d, "bad": %d, "identical": %d, "in_window": %d, "duration_us": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, total.ok, total.bad, total.identical, total.in_window, summary.duration,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max
  ))
  io.write("example: " .. string.gsub(first, "\n", " ") .. "\n")
end

-- wrk script: replay pre-built requests from $BENCH_REQUESTS (bench.payloads format: 8 ASCII
-- digits of length, then the raw request), each once, in order. Run with one thread (-t1).
-- After the last one it sends GET /__bench_exhausted, which every server here answers 404, so
-- an undersized pool shows as non-2xx answers instead of replays; BENCH_WRAP=1 cycles
-- instead (for servers that do not care about unique ids).
local reqs = {}
local n = 0
local i = 0
local wrap = os.getenv("BENCH_WRAP") == "1"
local exhausted = "GET /__bench_exhausted HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

function init(args)
  local f = assert(io.open(os.getenv("BENCH_REQUESTS"), "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while pos <= #data do
    local len = tonumber(data:sub(pos, pos + 7))
    pos = pos + 8
    n = n + 1
    reqs[n] = data:sub(pos, pos + len - 1)
    pos = pos + len
  end
end

function request()
  i = i + 1
  if i > n then
    if not wrap then
      return exhausted
    end
    i = 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end

-- wrk script: GET /twins/{id} on random devices seeded by bench/run.
-- Env: HUB_TOKEN (a SAS token), DEVICES (fleet size), PREFIX (device id prefix), WIDTH (id digits).
local token = os.getenv("HUB_TOKEN")
local n = tonumber(os.getenv("DEVICES") or "10000")
local prefix = os.getenv("PREFIX") or "bench-"
local width = tonumber(os.getenv("WIDTH") or "5")
local fmt = "/twins/" .. prefix .. "%0" .. width .. "d?api-version=2021-04-12"

request = function()
  return wrk.format("GET", string.format(fmt, math.random(0, n - 1)), { ["Authorization"] = token })
end

done = function(summary, latency, requests)
  io.write(string.format("twin GET: %.0f req/s, p50 %.2f ms, p99 %.2f ms, errors %d non-2xx %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end

-- wrk script: POST /devices/query, one page of 100 twins per request.
-- Env: HUB_TOKEN (a SAS token), QUERY (default: every twin).
local token = os.getenv("HUB_TOKEN")
local query = os.getenv("QUERY") or "SELECT * FROM devices"
local body = '{"query": "' .. query:gsub('"', '\\"') .. '"}'

request = function()
  return wrk.format("POST", "/devices/query?api-version=2021-04-12", {
    ["Authorization"] = token,
    ["Content-Type"] = "application/json",
    ["x-ms-max-item-count"] = "100",
  }, body)
end

done = function(summary, latency, requests)
  io.write(string.format("query page of 100: %.0f req/s, p50 %.2f ms, p99 %.2f ms, errors %d non-2xx %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end

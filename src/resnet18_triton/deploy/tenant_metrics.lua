-- Per-tenant metrics of the proxy, in Prometheus' text format (version 0.0.4).
--
-- Rendered into nginx.conf by resnet18_triton.deploy.proxy (init_by_lua_block), which makes this
-- chunk's value the global `tenant_metrics`. The counters live in the shared dict
-- `tenant_metrics`, so every worker adds to the same ones and a scrape sees them all; they reset
-- when nginx restarts, as Prometheus counters may.
--
-- tenant_metrics.log(): in the log phase of every request but health probes.
-- tenant_metrics.collect(): the body of GET /metrics on the metrics listener.
--
-- Labels: tenant is the API key's name from the key file ("-" for a request without a valid
-- key, and for every request when keys are off), never the key; outcome is what the caller got.
-- Both come from short, fixed sets, so the number of series stays bounded.

local M = {}

local PREFIX = "resnet18_proxy_"
local SEP = "\t"  -- key names never hold a tab (keys.py allows [A-Za-z0-9_.-])
-- Upper bounds (seconds) of the answer-time histogram: a photo alone takes tens of
-- milliseconds, a flood's queue tens of seconds.
local BUCKETS = { "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60" }
local OUTCOMES = {
  [400] = "bad_request",
  [401] = "unauthorized",
  [403] = "forbidden",
  [404] = "not_found",
  [413] = "too_large",
  [429] = "too_many",
  [499] = "client_closed",
  [500] = "server_error",
  [502] = "upstream_failed",
  [503] = "unavailable",
  [504] = "upstream_timeout",
}

local function outcome_of(status)
  if status < 400 then
    return "answered"
  end
  return OUTCOMES[status] or (status < 500 and "client_error" or "server_error")
end

local function add(dict, key, value)
  -- incr with an initial value creates the counter atomically; a full dict evicts the least
  -- recently used counters rather than failing the request (4 MiB holds thousands of tenants).
  dict:incr(key, value, 0)
end

function M.log()
  local uri = ngx.var.uri or ""
  if uri:sub(1, 11) == "/v2/health/" then
    return  -- probes are neither tenants' traffic nor refused
  end
  local dict = ngx.shared.tenant_metrics
  local tenant = ngx.var.api_key_name
  if tenant == nil or tenant == "" then
    tenant = "-"
  end
  local outcome = outcome_of(ngx.status)
  add(dict, "requests" .. SEP .. tenant .. SEP .. outcome, 1)
  add(dict, "received_bytes" .. SEP .. tenant, tonumber(ngx.var.request_length) or 0)
  if outcome ~= "answered" then
    return
  end
  local seconds = tonumber(ngx.var.request_time) or 0
  for _, bound in ipairs(BUCKETS) do
    if seconds <= tonumber(bound) then
      add(dict, "bucket" .. SEP .. tenant .. SEP .. bound, 1)
    end
  end
  add(dict, "seconds_sum" .. SEP .. tenant, seconds)
  add(dict, "seconds_count" .. SEP .. tenant, 1)
  -- "0.012, 0.340" when nginx tried a second replica: the replicas' time is the sum.
  local upstream = ngx.var.upstream_response_time or ""
  for part in upstream:gmatch("[%d.]+") do
    add(dict, "upstream_seconds" .. SEP .. tenant, tonumber(part) or 0)
  end
end

local function label(value)
  return (value:gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("\n", "\\n"))
end

local function family(lines, name, kind, help)
  lines[#lines + 1] = "# HELP " .. PREFIX .. name .. " " .. help
  lines[#lines + 1] = "# TYPE " .. PREFIX .. name .. " " .. kind
end

local function number(value)
  if value == math.floor(value) then
    return string.format("%.0f", value)
  end
  return string.format("%.6f", value)
end

local function sample(lines, name, labels, value)
  lines[#lines + 1] = PREFIX .. name .. "{" .. labels .. "} " .. number(value)
end

-- Every counter in the dict, as { kind = { "tenant<SEP>rest" = value } }.
local function snapshot(dict)
  local found = {}
  for _, key in ipairs(dict:get_keys(0)) do
    local kind, rest = key:match("^([^\t]+)\t(.*)$")
    if kind then
      found[kind] = found[kind] or {}
      found[kind][rest] = dict:get(key) or 0
    end
  end
  return found
end

local function sorted_keys(map)
  local keys = {}
  for key in pairs(map or {}) do
    keys[#keys + 1] = key
  end
  table.sort(keys)
  return keys
end

-- A counter family whose only label is the tenant.
local function tenant_counter(lines, values, name, help)
  family(lines, name, "counter", help)
  for _, tenant in ipairs(sorted_keys(values)) do
    sample(lines, name, 'tenant="' .. label(tenant) .. '"', values[tenant])
  end
end

function M.collect()
  local counters = snapshot(ngx.shared.tenant_metrics)
  local lines = {}

  family(lines, "requests_total", "counter",
    "Requests through the proxy (health probes aside), by tenant (API key name) and outcome.")
  for _, key in ipairs(sorted_keys(counters.requests)) do
    local tenant, outcome = key:match("^(.*)\t(.*)$")
    sample(lines, "requests_total",
      'tenant="' .. label(tenant) .. '",outcome="' .. outcome .. '"', counters.requests[key])
  end

  family(lines, "request_duration_seconds", "histogram",
    "Time from a request's first byte to its answer's last byte, answered requests only.")
  for _, tenant in ipairs(sorted_keys(counters.seconds_count)) do
    local labels = 'tenant="' .. label(tenant) .. '"'
    local buckets = counters.bucket or {}
    for _, bound in ipairs(BUCKETS) do
      sample(lines, "request_duration_seconds_bucket", labels .. ',le="' .. bound .. '"',
        buckets[tenant .. SEP .. bound] or 0)
    end
    local count = counters.seconds_count[tenant]
    sample(lines, "request_duration_seconds_bucket", labels .. ',le="+Inf"', count)
    sample(lines, "request_duration_seconds_sum", labels, counters.seconds_sum[tenant] or 0)
    sample(lines, "request_duration_seconds_count", labels, count)
  end

  tenant_counter(lines, counters.upstream_seconds, "upstream_seconds_total",
    "Seconds the replicas took over a tenant's answered requests (nginx's upstream time).")
  tenant_counter(lines, counters.received_bytes, "received_bytes_total",
    "Bytes of requests (line, headers and body) the proxy received, refused ones included.")

  ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
  ngx.print(table.concat(lines, "\n") .. "\n")
end

return M

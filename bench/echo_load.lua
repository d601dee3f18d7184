-- wrk script: POST tools/call echo into one already-initialised MCP session and check every answer.
-- The harness passes the session through the environment (BENCH_*), initialises it beforehand, and
-- reads the single "BENCH_RESULT {json}" line that done() prints.

local session_id = os.getenv("BENCH_SESSION_ID") or ""
local protocol_version = os.getenv("BENCH_PROTOCOL_VERSION")
local message = os.getenv("BENCH_MESSAGE")
local extra_headers = os.getenv("BENCH_EXTRA_HEADERS") or ""  -- "Name: value\n" lines

-- Every answer must carry exactly this JSON string (the message is new for each run, so nothing
-- else can contain it); a JSON-RPC error or an isError result cannot.
local expected_text = '"Echo: ' .. message .. '"'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

local headers = {}
local body_prefix, body_suffix
local sent = 0
bad_status = 0
bad_body = 0

function init(args)
  headers["Accept"] = "application/json, text/event-stream"
  headers["Content-Type"] = "application/json"
  headers["MCP-Protocol-Version"] = protocol_version
  if session_id ~= "" then
    headers["Mcp-Session-Id"] = session_id
  end
  for name, value in extra_headers:gmatch("([^:\n]+):%s*([^\n]*)\n") do
    headers[name] = value
  end
  -- Ids must be unique across all connections of the session: "<thread>-<counter>".
  body_prefix = '{"jsonrpc":"2.0","id":"' .. thread_number .. '-'
  body_suffix = '","method":"tools/call","params":{"name":"echo","arguments":{"message":"'
    .. message .. '"}}}'
end

function request()
  sent = sent + 1
  return wrk.format("POST", nil, headers, body_prefix .. sent .. body_suffix)
end

function response(status, response_headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
  elseif not (body:find(expected_text, 1, true) and body:find('"result"', 1, true))
      or body:find('"isError"%s*:%s*true') then
    bad_body = bad_body + 1
  end
end

function done(summary, latency, requests)
  local status_errors, body_errors = 0, 0
  for _, thread in ipairs(threads) do
    status_errors = status_errors + thread:get("bad_status")
    body_errors = body_errors + thread:get("bad_body")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,'
      .. '"http_status":%d,"bad_body":%d}}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, status_errors, body_errors))
end

-- Replays pre-rendered HTTP requests (written by bench/bench.py) with wrk.
--
--   wrk -t2 -c32 -d8s -s bench/lua/requests.lua http://127.0.0.1:PORT -- FILE MODE CONNS_PER_THREAD THREADS
--
-- FILE holds records "<byte length>\n<raw HTTP/1.1 request>". MODE "cycle" loops over them
-- (reads); MODE "once" hands each record out exactly once across all wrk threads (thread k
-- takes records k, k+T, k+2T, ...), for writes that must each hit a distinct row: resolve a
-- distinct pending escalation, create with a distinct error_signature. A thread whose share
-- runs out stops (and the run is reported "exhausted": bench.py then retries with more).
-- THREADS (= wrk's -t) must be passed: wrk runs each thread's init() right after its own
-- setup(), before the next thread's setup(), so a count gathered in setup() is still short
-- when the first threads initialise (thread 0 would take every record, duplicating writes).
--
-- done() prints one line "BENCH_RESULT {json}" with counts, latency percentiles (us) and a
-- histogram of response statuses.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tindex", #threads - 1)
   for _, t in ipairs(threads) do
      t:set("tcount", #threads)
   end
end

function init(args)
   local path, conns = args[1], tonumber(args[3] or "1")
   mode = args[2] or "cycle"
   tcount = tonumber(args[4] or "") or tcount
   margin = conns
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   reqs = {}
   local pos, i = 1, 0
   while pos <= #data do
      local nl = data:find("\n", pos, true)
      if not nl then break end
      local len = tonumber(data:sub(pos, nl - 1))
      if mode == "cycle" or (i % tcount) == tindex then
         reqs[#reqs + 1] = data:sub(nl + 1, nl + len)
      end
      i = i + 1
      pos = nl + 1 + len
   end
   assert(#reqs > 0, "no requests for this thread in " .. path)
   idx = 1
   if mode == "cycle" then
      idx = (tindex * 7919) % #reqs + 1 -- threads start at different places
   end
   statuses = {}
   exhausted = false
end

function request()
   local r = reqs[idx]
   idx = idx + 1
   if idx > #reqs then
      if mode == "cycle" then
         idx = 1
      else
         idx = #reqs -- never reached: response() stops the thread first
         exhausted = true
      end
   end
   return r
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if mode == "once" and idx > #reqs - margin then
      -- at most `margin` requests are in flight, each on its own record: stop before reuse
      exhausted = true
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local merged, any_exhausted = {}, false
   for _, t in ipairs(threads) do
      local s = t:get("statuses") or {}
      for k, v in pairs(s) do
         merged[k] = (merged[k] or 0) + v
      end
      if t:get("exhausted") then
         any_exhausted = true
      end
   end
   local parts = {}
   for k, v in pairs(merged) do
      parts[#parts + 1] = string.format('"%s":%d', k, v)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d},' ..
      '"statuses":{%s},"exhausted":%s}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
      table.concat(parts, ","), tostring(any_exhausted)))
end

-- redix jobs: the Redis side of the worker protocol, one function library
-- loaded by every node at start (FUNCTION LOAD REPLACE). `publish` above
-- is bridge/scripts/publish.lua wrapped in a function, so a job's events
-- take exactly the path of every channel's: one cluster-wide id, the
-- stream <P>s:job:<id>, the pub/sub channel <P>c:job:<id>.
--
-- Keys (<P> is the prefix, "redix:" by default):
--   <P>jobs:<kind>        queue stream per kind (summarize, ask), group
--                         `workers`; entry fields id, kind, input, key (the
--                         job's hash: the key redix_job_event takes)
--   <P>job:<id>           hash: kind input state (queued|running|done|
--                         failed) created updated entry attempt worker
--                         end result code message
--   <P>jobs:inflight:<h>  the summarize job in flight for a URL (h: SHA-1)
--   <P>jobs:cache:<h>     a URL's summary
--   <P>jobs:config        hash written by redix: ttl_ms cache_ttl_ms
--                         max_events max_attempts visibility_ms
--                         max_event_bytes
--   <P>jobs:progress      counter of worker calls (the breaker's progress)
--   <P>jobs:done          pub/sub: "<id> done" or "<id> failed" at the end
--
-- Redis Cluster (every function touches one slot): <P>{jobs}:<kind> the
-- queues (one tag, so one XREADGROUP reads both), <P>{job:<id>}:job the
-- hash (plus the settings ttl_ms max_events max_attempts max_event_bytes
-- visibility_ms), the channel job:<id> as <P>{job:<id>}:s, :last, :c;
-- <P>jobs:cache:<h> and <P>jobs:inflight:<h> (h: SHA-256) and the queues
-- are used by redix with single-key commands; no progress counter.
--
-- Functions:
--   redix_job_event  1 <P>job:<id> <consumer> token|done|error|heartbeat <json object>
--                      (Redis Cluster: 1 <P>{job:<id>}:job, the entry's field `key`)
--   redix_job_create 1 <P>{job:<id>}:job <kind> <input> <settings…>   (redix, Cluster)
--   redix_job_check  1 <P>{job:<id>}:job <stall ms>                   (redix, Cluster)
--   redix_job_submit 0 <P> <kind> <input> <new id> <max jobs> <may create 1|0>   (redix)
--   redix_jobs_sweep 0 <P> <stall ms> <visibility ms> <max attempts> <limit>   (redix)
-- Times are Redis's clock (TIME), so nodes and workers need not agree on one.
-- The group's pending list is the set of jobs in a worker's hands: each
-- entry's idle time restarts with every event (XCLAIM … JUSTID), so it is
-- the time since the worker last said anything, which both the takeover
-- (XAUTOCLAIM min-idle) and the stall verdict read.

local GROUP = 'workers'
local KINDS = {'summarize', 'ask'}
local EVENTS = {token = true, done = true, error = true, heartbeat = true}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- What redix wrote at start; the defaults are redix's.
local function config(prefix)
  local c = redis.call('HMGET', prefix .. 'jobs:config', 'ttl_ms', 'cache_ttl_ms',
    'max_events', 'max_attempts', 'max_event_bytes')
  return {
    ttl = tonumber(c[1]) or 600000,
    cache_ttl = tonumber(c[2]) or 3600000,
    max_events = tonumber(c[3]) or 2000,
    max_attempts = tonumber(c[4]) or 3,
    max_bytes = tonumber(c[5]) or 65536,
  }
end

-- Where a job's keys are: its hash, its channel's names (publish.lua's
-- KEYS and ARGV[1]) and the prefix. A single server's are as above; with
-- Redis Cluster every key of job <id> carries the tag {job:<id>} (the
-- hash <P>{job:<id>}:job, the channel job:<id> as <P>{job:<id>}:s, :last,
-- :c), so one slot holds them all.
local function single_job(prefix, id)
  local channel = 'job:' .. id
  return {prefix = prefix, id = id, hash = prefix .. 'job:' .. id,
    stream = prefix .. 's:' .. channel, last = prefix .. 'last', notify = prefix .. 'c:' .. channel}
end

local function cluster_job(key)
  local prefix, id = string.match(key or '', '^(.*){job:([%w_%-]+)}:job$')
  if not prefix then return nil end
  local tag = prefix .. '{job:' .. id .. '}'
  return {prefix = prefix, id = id, hash = key, cluster = true,
    stream = tag .. ':s', last = tag .. ':last', notify = tag .. ':c'}
end

-- One event on the job's channel; its stream lives as long as the job.
local function emit(j, cfg, data)
  local r = publish({j.stream, j.last}, {j.notify, data, cfg.max_events, cfg.ttl, 0})
  return r[1]
end

-- The job ended with the event `end_id`: its state, then everything that
-- waited on it (cache, in-flight marker, queue entry, the nodes). With
-- Redis Cluster those live in other slots: the worker acknowledges the
-- entry, the node that created the job writes the cache.
local function finish(j, cfg, state, end_id, fields, now)
  local prefix, id, job = j.prefix, j.id, j.hash
  redis.call('HSET', job, 'state', state, 'end', end_id, 'updated', now, unpack(fields))
  redis.call('PEXPIRE', job, cfg.ttl)
  if not j.cluster then
    local h = redis.call('HMGET', job, 'kind', 'input', 'entry', 'result')
    local kind, input, entry, result = h[1], h[2], h[3], h[4]
    if kind == 'summarize' and input then
      local key = redis.sha1hex(input)
      local inflight = prefix .. 'jobs:inflight:' .. key
      if redis.call('GET', inflight) == id then redis.call('DEL', inflight) end
      if state == 'done' and result and cfg.cache_ttl > 0 then
        redis.call('SET', prefix .. 'jobs:cache:' .. key, result, 'PX', cfg.cache_ttl)
      end
    end
    if kind and entry then redis.call('XACK', prefix .. 'jobs:' .. kind, GROUP, entry) end
  end
  redis.call('PUBLISH', prefix .. 'jobs:done', id .. ' ' .. state)
end

-- Ends a job with `event: error` (redix's own verdicts: stalled, exhausted).
local function fail(j, cfg, code, message, now)
  local data = '{"type":"error","code":' .. cjson.encode(code) ..
    ',"message":' .. cjson.encode(message) .. '}'
  local end_id = emit(j, cfg, data)
  finish(j, cfg, 'failed', end_id, {'code', code, 'message', message}, now)
end

local function ended(state)
  return state == 'done' or state == 'failed'
end

-- The event's JSON: {"type":<kind>[,"attempt":n],<the body's members>}.
-- The type comes first: redix names SSE events from it without parsing.
local function event_json(kind, attempt, body)
  local data = '{"type":"' .. kind .. '"'
  if attempt > 1 then data = data .. ',"attempt":' .. attempt end
  local members = string.match(body, '^%s*{%s*(.-)%s*}%s*$')
  if members ~= '' then data = data .. ',' .. members end
  return data .. '}'
end

-- A worker's body: one line, a JSON object, without the keys redix sets.
local function check_body(kind, body, cfg)
  if #body > cfg.max_bytes then return nil, 'the event is over ' .. cfg.max_bytes .. ' bytes' end
  if string.find(body, '[\r\n]') or not string.match(body, '^%s*{.*}%s*$') then
    return nil, 'the event must be one line holding a JSON object'
  end
  local ok, obj = pcall(cjson.decode, body)
  if not ok or type(obj) ~= 'table' then return nil, 'the event is not valid JSON' end
  if obj.type ~= nil or obj.attempt ~= nil then
    return nil, '"type" and "attempt" are set by redix'
  end
  if kind == 'done' and type(obj.result) ~= 'string' then
    return nil, 'done needs {"result":"..."}'
  end
  return obj
end

-- A checked event of the job's worker: on the channel, and its end.
local function send(j, cfg, kind, attempt, body, obj, now)
  local end_id = emit(j, cfg, event_json(kind, attempt, body))
  if kind == 'done' then
    finish(j, cfg, 'done', end_id, {'result', obj.result}, now)
  elseif kind == 'error' then
    local code = type(obj.code) == 'string' and obj.code or 'worker_error'
    local message = type(obj.message) == 'string' and obj.message or ''
    finish(j, cfg, 'failed', end_id, {'code', code, 'message', message}, now)
  end
  return end_id
end

-- Redis Cluster: the settings a job carries in its hash (redix writes
-- them at creation; the config hash is in another slot).
local function job_config(job)
  local c = redis.call('HMGET', job, 'ttl_ms', 'max_events', 'max_attempts',
    'max_event_bytes', 'visibility_ms')
  return {
    ttl = tonumber(c[1]) or 600000, cache_ttl = 0,
    max_events = tonumber(c[2]) or 2000, max_attempts = tonumber(c[3]) or 3,
    max_bytes = tonumber(c[4]) or 65536, visibility = tonumber(c[5]) or 10000,
  }
end

-- Redis Cluster: redix_job_event on one slot. The queue is elsewhere, so
-- who holds the job is the hash's `worker`: the first consumer to call
-- takes it, and another may take it over (attempt + 1) only once the
-- holder has been quiet for visibility_ms, as XAUTOCLAIM would.
local function cluster_event(j, worker, kind, body)
  local h = redis.call('HMGET', j.hash, 'state', 'worker', 'updated', 'attempt')
  if not h[1] then
    return redis.error_reply('NOJOB no such job (or it expired): XACK its entry and take the next')
  end
  local cfg = job_config(j.hash)
  local obj, why = check_body(kind, body, cfg)
  if not obj then return redis.error_reply('BADEVENT ' .. why) end
  if ended(h[1]) then
    return redis.error_reply('ENDED the job has ended: XACK its entry and take the next')
  end
  local now = now_ms()
  local attempt = tonumber(h[4]) or 0
  if h[2] ~= worker then
    if h[2] and now - (tonumber(h[3]) or 0) < cfg.visibility then
      return redis.error_reply('NOTOWNER another consumer holds this job now: drop it without XACK')
    end
    attempt = attempt + 1
  end
  if attempt > cfg.max_attempts then
    fail(j, cfg, 'attempts_exhausted',
      'the job was delivered ' .. attempt .. ' times; at most ' .. cfg.max_attempts, now)
    return redis.error_reply('ENDED the job ran out of attempts: XACK its entry and take the next')
  end
  redis.call('HSET', j.hash, 'state', 'running', 'updated', now, 'attempt', attempt, 'worker', worker)
  redis.call('PEXPIRE', j.hash, cfg.ttl)
  if kind == 'heartbeat' then return attempt end
  return send(j, cfg, kind, attempt, body, obj, now)
end

-- redix_job_create 1 <P>{job:<id>}:job <kind> <input> <ttl ms> <max events>
--   <max attempts> <max event bytes> <visibility ms>            (redix, Redis Cluster)
-- The job's hash, queued, with the settings its events read.
local function job_create(keys, args)
  local j = cluster_job(keys[1])
  local kind, input, ttl = args[1], args[2], tonumber(args[3])
  if not j or not (kind == 'summarize' or kind == 'ask') or not input or not ttl or #args < 7 then
    return redis.error_reply('BADSUBMIT redix_job_create 1 <prefix>{job:<id>}:job <kind> <input> <ttl> <max events> <max attempts> <max bytes> <visibility>')
  end
  if redis.call('EXISTS', j.hash) == 1 then return redis.error_reply('BADSUBMIT the job id is taken') end
  local now = now_ms()
  redis.call('HSET', j.hash, 'kind', kind, 'input', input, 'state', 'queued',
    'created', now, 'updated', now, 'attempt', 0, 'ttl_ms', ttl, 'max_events', args[4],
    'max_attempts', args[5], 'max_event_bytes', args[6], 'visibility_ms', args[7])
  redis.call('PEXPIRE', j.hash, ttl)
  return now
end

-- redix_job_check 1 <P>{job:<id>}:job <stall ms>                 (redix, Redis Cluster)
-- The sweep's verdict on a delivered job: 'gone', 'ended', 'running', or
-- 'stalled' / 'exhausted' (then it failed here, now).
local function job_check(keys, args)
  local j, stall = cluster_job(keys[1]), tonumber(args[1])
  if not j or not stall then
    return redis.error_reply('BADSWEEP redix_job_check 1 <prefix>{job:<id>}:job <stall ms>')
  end
  local h = redis.call('HMGET', j.hash, 'state', 'updated', 'attempt')
  if not h[1] then return 'gone' end
  if ended(h[1]) then return 'ended' end
  local cfg, now = job_config(j.hash), now_ms()
  local quiet, attempt = now - (tonumber(h[2]) or 0), tonumber(h[3]) or 0
  if attempt >= cfg.max_attempts and quiet >= cfg.visibility then
    fail(j, cfg, 'attempts_exhausted', 'the job was delivered ' .. attempt ..
      ' times (at most ' .. cfg.max_attempts .. ') and its worker went quiet', now)
    return 'exhausted'
  elseif quiet >= stall then
    fail(j, cfg, 'worker_stalled', 'the worker sent nothing for ' .. quiet .. ' ms', now)
    return 'stalled'
  end
  return 'running'
end

-- redix_job_event 1 <P>job:<id> <consumer> <kind> <json object>
-- Errors a worker must act on: NOJOB / ENDED (XACK the entry, take the
-- next), NOTOWNER (another consumer holds the job now: drop it, no XACK).
local function job_event(keys, args)
  local worker, kind, body = args[1], args[2], args[3] or '{}'
  local cj = cluster_job(keys[1])
  if cj and worker and EVENTS[kind] then return cluster_event(cj, worker, kind, body) end
  local prefix, id = string.match(keys[1] or '', '^(.*)job:([%w_%-]+)$')
  if not prefix or not worker or not EVENTS[kind] then
    return redis.error_reply('BADEVENT call FCALL redix_job_event 1 <prefix>job:<id> <consumer> token|done|error|heartbeat <json object>')
  end
  local cfg = config(prefix)
  local obj, why = check_body(kind, body, cfg)
  if not obj then return redis.error_reply('BADEVENT ' .. why) end
  local job = prefix .. 'job:' .. id
  local h = redis.call('HMGET', job, 'state', 'kind', 'entry')
  local state, jkind, entry = h[1], h[2], h[3]
  if not state or not jkind or not entry then
    return redis.error_reply('NOJOB no such job (or it expired): XACK its entry and take the next')
  end
  if ended(state) then
    return redis.error_reply('ENDED the job has ended: XACK its entry and take the next')
  end
  -- Who holds the job: the consumer the group delivered its entry to last.
  local stream = prefix .. 'jobs:' .. jkind
  local held = redis.call('XPENDING', stream, GROUP, entry, entry, 1)[1]
  if not held or held[2] ~= worker then
    return redis.error_reply('NOTOWNER another consumer holds this job now: drop it without XACK')
  end
  local attempt = tonumber(held[4])
  local now = now_ms()
  if attempt > cfg.max_attempts then
    fail(single_job(prefix, id), cfg, 'attempts_exhausted',
      'the job was delivered ' .. attempt .. ' times; at most ' .. cfg.max_attempts, now)
    return redis.error_reply('ENDED the job ran out of attempts: XACK its entry and take the next')
  end
  -- Every call is a heartbeat: the entry's idle time starts over, so it is
  -- reclaimed only after visibility_ms without one.
  redis.call('XCLAIM', stream, GROUP, worker, 0, entry, 'JUSTID')
  redis.call('INCR', prefix .. 'jobs:progress')
  redis.call('HSET', job, 'state', 'running', 'updated', now, 'attempt', attempt, 'worker', worker)
  redis.call('PEXPIRE', job, cfg.ttl)
  if kind == 'heartbeat' then return attempt end
  return send(single_job(prefix, id), cfg, kind, attempt, body, obj, now)
end

-- redix_job_submit 0 <P> <kind> <input> <new id> <max jobs> <may create>
-- {'cached', summary} | {'joined', id} | {'created', id}, or {'capped', ''}
-- when a new job was needed and <may create> is 0 (the client is at its
-- cap of jobs in flight); TOOMANY when the kind's queue holds <max jobs>
-- entries.
local function job_submit(keys, args)
  local prefix, kind, input, id, max_jobs = args[1], args[2], args[3], args[4], tonumber(args[5])
  local may_create = args[6] ~= '0'
  if not (kind == 'summarize' or kind == 'ask') or not input or not id or not max_jobs then
    return redis.error_reply('BADSUBMIT redix_job_submit 0 <prefix> summarize|ask <input> <id> <max jobs> <may create>')
  end
  local cfg = config(prefix)
  local inflight
  if kind == 'summarize' then
    local key = redis.sha1hex(input)
    local cached = redis.call('GET', prefix .. 'jobs:cache:' .. key)
    if cached then return {'cached', cached} end
    inflight = prefix .. 'jobs:inflight:' .. key
    local running = redis.call('GET', inflight)
    if running and redis.call('EXISTS', prefix .. 'job:' .. running) == 1 then
      return {'joined', running}
    end
  end
  if not may_create then return {'capped', ''} end
  local stream = prefix .. 'jobs:' .. kind
  local job = prefix .. 'job:' .. id
  if redis.call('XLEN', stream) >= max_jobs then
    return redis.error_reply('TOOMANY ' .. max_jobs .. ' ' .. kind .. ' jobs are queued or running')
  end
  if redis.call('EXISTS', job) == 1 then return redis.error_reply('BADSUBMIT the job id is taken') end
  local now = now_ms()
  local entry = redis.call('XADD', stream, '*', 'id', id, 'kind', kind, 'input', input, 'key', job)
  redis.call('HSET', job, 'kind', kind, 'input', input, 'state', 'queued',
    'created', now, 'updated', now, 'entry', entry, 'attempt', 0)
  -- Bounded before it ends too: a job nobody takes is gone after the ttl.
  redis.call('PEXPIRE', job, cfg.ttl)
  if inflight then redis.call('SET', inflight, id, 'PX', cfg.ttl) end
  return {'created', id}
end

-- A flat reply (name, value, ...) as a table.
local function fields(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- One kind's queue: fails the jobs whose worker went quiet (delivered
-- too often: exhausted; else past the stall time: stalled), trims
-- acknowledged entries, and returns {waiting, delivered, entries read}.
local function sweep_queue(prefix, kind, opts, cfg, now, out)
  local stream = prefix .. 'jobs:' .. kind
  local group
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = fields(g)
    if f['name'] == GROUP then group = f end
  end
  if not group then return redis.error_reply('NOGROUP ' .. stream .. ' has no group ' .. GROUP) end
  local quiet = math.min(opts.stall, opts.visibility)
  for _, p in ipairs(redis.call('XPENDING', stream, GROUP, 'IDLE', quiet, '-', '+', opts.limit)) do
    local entry, idle, count = p[1], tonumber(p[3]), tonumber(p[4])
    local verdict
    if count >= opts.max_attempts and idle >= opts.visibility then
      verdict = {out.exhausted, 'attempts_exhausted', 'the job was delivered ' .. count ..
        ' times (at most ' .. opts.max_attempts .. ') and its worker went quiet'}
    elseif idle >= opts.stall then
      verdict = {out.stalled, 'worker_stalled', 'the worker sent nothing for ' .. idle .. ' ms'}
    end
    if verdict then
      local e = redis.call('XRANGE', stream, entry, entry)[1]
      local id = e and fields(e[2])['id']
      local state = id and redis.call('HGET', prefix .. 'job:' .. id, 'state')
      if state and not ended(state) then
        fail(single_job(prefix, id), cfg, verdict[2], verdict[3], now)
        table.insert(verdict[1], id)
      end
      redis.call('XACK', stream, GROUP, entry)
    end
  end
  -- Entries before the oldest one still delivered (or the last delivered)
  -- are acknowledged: trimmed (not deleted one by one, which would make
  -- the group's lag unknown).
  local pending = redis.call('XPENDING', stream, GROUP)
  local keep = pending[2] or group['last-delivered-id']
  if keep and keep ~= '0-0' then redis.call('XTRIM', stream, 'MINID', keep) end
  local waiting = tonumber(group['lag'])
  if not waiting then waiting = math.max(redis.call('XLEN', stream) - pending[1], 0) end
  return {waiting, pending[1], tonumber(group['entries-read']) or 0}
end

-- redix_jobs_sweep 0 <P> <stall ms> <visibility ms> <max attempts> <limit>
-- {stalled ids, exhausted ids, waiting, delivered, entries read, progress}
local function jobs_sweep(keys, args)
  local opts = {
    stall = tonumber(args[2]), visibility = tonumber(args[3]),
    max_attempts = tonumber(args[4]), limit = tonumber(args[5]),
  }
  local prefix = args[1]
  if not prefix or not opts.stall or not opts.visibility or not opts.max_attempts or not opts.limit then
    return redis.error_reply('BADSWEEP redix_jobs_sweep 0 <prefix> <stall ms> <visibility ms> <max attempts> <limit>')
  end
  local cfg, now = config(prefix), now_ms()
  local out = {stalled = {}, exhausted = {}}
  local waiting, delivered, read = 0, 0, 0
  for _, kind in ipairs(KINDS) do
    local q = sweep_queue(prefix, kind, opts, cfg, now, out)
    if q.err then return q end
    waiting, delivered, read = waiting + q[1], delivered + q[2], read + q[3]
  end
  local progress = tonumber(redis.call('GET', prefix .. 'jobs:progress')) or 0
  return {out.stalled, out.exhausted, waiting, delivered, read, progress}
end

redis.register_function('redix_job_event', job_event)
redis.register_function('redix_job_submit', job_submit)
redis.register_function('redix_jobs_sweep', jobs_sweep)
redis.register_function('redix_job_create', job_create)
redis.register_function('redix_job_check', job_check)

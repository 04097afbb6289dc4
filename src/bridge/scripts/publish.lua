-- redix publish: appends one event to a channel's stream and announces it
-- on the channel's pub/sub channel, in one atomic step, under an id from
-- one cluster-wide sequence (so one id orders events of every channel).
--
-- With Redis Cluster the caller passes the channel's hash-tagged names
-- instead (<prefix>{<channel>}:s, :last, :p:<publisher id>, :c), all in
-- one slot, and the sequence is then the channel's own. The announcement
-- then goes out with SPUBLISH (sharded pub/sub, Redis 7): only the nodes
-- of the channel's shard carry it, and a node subscribed there hears one
-- channel's events from one master, in order. Only cluster names end in
-- '}:c' (a single server's end in the channel, which holds no '}').
--
-- KEYS[1]  stream of the channel        <prefix>s:<channel>
-- KEYS[2]  the last id handed out       <prefix>last
-- KEYS[3]  (optional) publisher id seen <prefix>p:<publisher id>
-- ARGV[1]  pub/sub channel              <prefix>c:<channel>
-- ARGV[2]  data (one line of JSON)
-- ARGV[3]  events kept per stream (up to an eighth more between trims)
-- ARGV[4]  age of kept events in ms (also the idle stream's expiry)
-- ARGV[5]  how long a publisher id is remembered, in ms
-- ARGV[6]  (optional, market trades) the fencing value of the market lease:
--          then KEYS[3] is the lease <prefix>market:lease (no publisher id),
--          and nothing is published unless it still holds that value
-- ARGV[7]  (optional) 'token' (Redis Cluster, where the lease is in another
--          slot): ARGV[6] is the holder's fencing token and KEYS[3] the
--          channel's fence <prefix>{<channel>}:fence, the highest token that
--          published on it; nothing is published if it holds a higher one
--          (the error names it), else it is raised to this one
-- Returns {id, 1 if the publisher id was already seen (nothing published) else 0}.
-- The pub/sub message is "<id> <data>".
local stream, last_key, seen_key = KEYS[1], KEYS[2], KEYS[3]
local notify, data = ARGV[1], ARGV[2]
local maxlen, max_age, seen_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fence = ARGV[6]

if fence and ARGV[7] == 'token' then
  local token, highest = tonumber(fence), tonumber(redis.call('GET', KEYS[3]) or '0')
  if not token or (highest and highest > token) then
    return redis.error_reply('FENCED ' .. tostring(highest) .. ' a newer market lease holder published here')
  end
  if highest ~= token then redis.call('SET', KEYS[3], fence) end
  seen_key = nil
elseif fence then
  if redis.call('GET', KEYS[3]) ~= fence then
    return redis.error_reply('FENCED the market lease is no longer held by this publisher')
  end
  seen_key = nil
end

if seen_key then
  local prior = redis.call('GET', seen_key)
  if prior then return {prior, 1} end
end

-- Stream ids are <ms>-<n>: the server clock, never going back, and a
-- counter within one millisecond (below 2^20, as redix packs ids).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, n = now, 0
local last = redis.call('GET', last_key)
if last then
  local lms, ln = string.match(last, '^(%d+)-(%d+)$')
  lms, ln = tonumber(lms), tonumber(ln)
  if lms and lms >= now then
    ms, n = lms, ln + 1
    if n > 1048575 then ms, n = lms + 1, 0 end
  end
end
local id = string.format('%d-%d', ms, n)
redis.call('SET', last_key, id)
redis.call('XADD', stream, id, 'd', data)

-- Trim (by count, then by age) and record the newest id trimmed as the
-- stream's max-deleted-entry-id, so a node resuming from an older id
-- knows it missed events instead of leaving a silent gap. The count trim
-- lets the stream run an eighth over before cutting back, so most
-- publishes trim nothing.
local function ms_of(stream_id)
  return tonumber(string.match(stream_id, '^(%d+)-'))
end
local function newer(a, b)
  local ams, an = string.match(a, '^(%d+)-(%d+)$')
  local bms, bn = string.match(b, '^(%d+)-(%d+)$')
  ams, an, bms, bn = tonumber(ams), tonumber(an), tonumber(bms), tonumber(bn)
  return ams > bms or (ams == bms and an > bn)
end
local gone = nil
local len = redis.call('XLEN', stream)
if len > maxlen + math.max(math.floor(maxlen / 8), 1) then
  local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', len - maxlen)
  gone = old[#old][1]
  redis.call('XTRIM', stream, 'MAXLEN', maxlen)
end
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
if oldest and ms_of(oldest[1]) < ms - max_age then
  local cutoff = string.format('%d-0', ms - max_age)
  local expired = redis.call('XREVRANGE', stream, '(' .. cutoff, '-', 'COUNT', 1)[1][1]
  if gone == nil or newer(expired, gone) then gone = expired end
  redis.call('XTRIM', stream, 'MINID', cutoff)
end
if gone then redis.call('XSETID', stream, id, 'MAXDELETEDID', gone) end
redis.call('PEXPIRE', stream, max_age)
local announce = 'PUBLISH'
if string.sub(notify, -3) == '}:c' then announce = 'SPUBLISH' end
redis.call(announce, notify, id .. ' ' .. data)
if seen_key then redis.call('SET', seen_key, id, 'PX', seen_ttl) end
return {id, 0}

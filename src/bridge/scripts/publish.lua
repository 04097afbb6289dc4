-- redix publish: appends one event to a channel's stream and announces it
-- on the channel's pub/sub channel, in one atomic step, under an id from
-- one cluster-wide sequence (so one id orders events of every channel).
--
-- KEYS[1]  stream of the channel        <prefix>s:<channel>
-- KEYS[2]  the last id handed out       <prefix>last
-- KEYS[3]  (optional) publisher id seen <prefix>p:<publisher id>
-- ARGV[1]  pub/sub channel              <prefix>c:<channel>
-- ARGV[2]  data (one line of JSON)
-- ARGV[3]  events kept per stream (MAXLEN ~)
-- ARGV[4]  age of kept events in ms (MINID ~ and the stream's expiry)
-- ARGV[5]  how long a publisher id is remembered, in ms
-- Returns {id, 1 if the publisher id was already seen (nothing published) else 0}.
-- The pub/sub message is "<id> <data>".
local stream, last_key, seen_key = KEYS[1], KEYS[2], KEYS[3]
local notify, data = ARGV[1], ARGV[2]
local maxlen, max_age, seen_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

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
redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'd', data)
redis.call('XTRIM', stream, 'MINID', '~', string.format('%d', ms - max_age))
redis.call('PEXPIRE', stream, max_age)
redis.call('PUBLISH', notify, id .. ' ' .. data)
if seen_key then redis.call('SET', seen_key, id, 'PX', seen_ttl) end
return {id, 0}

-- redix load: what a node needs to serve a channel's history.
--
-- KEYS[1]  stream of the channel
-- KEYS[2]  the data-loss mark: ids up to it were lost with Redis
-- ARGV[1]  events a node keeps per channel (N)
-- ARGV[2]  "" for a first load, else the last id the node has: a reload
--          after a lost link wants everything after it
-- Returns {trimmed, entries, lost}: the highest id the stream has dropped
-- ("0-0" when none), entries oldest first, each {id, {field, value, ...}},
-- and the data-loss mark ("0-0" when none).
-- A first load returns the newest N + 1 entries, so the caller knows
-- whether older ones exist; a reload returns every entry after ARGV[2].
local lost = redis.call('GET', KEYS[2]) or '0-0'
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', {}, lost} end
local trimmed = '0-0'
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then trimmed = info[i + 1] end
end
if ARGV[2] ~= '' then
  return {trimmed, redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+'), lost}
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', tonumber(ARGV[1]) + 1)
local entries = {}
for i = #newest, 1, -1 do entries[#entries + 1] = newest[i] end
return {trimmed, entries, lost}

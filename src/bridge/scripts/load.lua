-- redix load: what a node needs to serve a channel's history.
--
-- KEYS[1]  stream of the channel
-- ARGV[1]  events to return at most
-- Returns {trimmed, entries}: the highest id the stream has dropped
-- ("0-0" when none), and the newest entries, newest first, each
-- {id, {field, value, ...}}. An entry beyond ARGV[1] is returned too, so
-- the caller knows events older than the ones it keeps exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', {}} end
local trimmed = '0-0'
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then trimmed = info[i + 1] end
end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', tonumber(ARGV[1]) + 1)
return {trimmed, entries}

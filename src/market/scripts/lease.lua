-- redix market lease: which node holds the one upstream connection of the
-- cluster. Taken with SET NX PX under a fencing token from a counter that
-- only grows; renewed by its holder only; the holder also writes the
-- upstream's status (refused symbols, breaker) for every node to read.
--
-- KEYS[1]  the lease                <prefix>market:lease   "<node> <fence>"
-- KEYS[2]  the fencing counter      <prefix>market:fence
-- KEYS[3]  the upstream's status    <prefix>market:status  (JSON)
-- ARGV[1]  this node
-- ARGV[2]  lease time to live, ms
-- ARGV[3]  1: take the lease if nobody holds it; 0: only renew it
-- ARGV[4]  the status to write while holding ('' for none)
-- Returns {1 if this node holds the lease now, the lease's value ('' when
-- free), its remaining time to live in ms}.
local lease, fence_key, status_key = KEYS[1], KEYS[2], KEYS[3]
local node, ttl, take, status = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]

local cur = redis.call('GET', lease)
if cur then
  local holder = string.match(cur, '^(.*) %d+$')
  if holder ~= node then return {0, cur, redis.call('PTTL', lease)} end
  redis.call('PEXPIRE', lease, ttl)
  if status ~= '' then redis.call('SET', status_key, status, 'PX', ttl * 2) end
  return {1, cur, ttl}
end
if take ~= '1' then return {0, '', 0} end
local fence = redis.call('INCR', fence_key)
local value = node .. ' ' .. fence
redis.call('SET', lease, value, 'NX', 'PX', ttl)
return {1, value, ttl}

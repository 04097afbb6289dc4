-- redix market interest: the symbols each node has subscribers of, as
-- members "<node>|<symbol>" of one sorted set scored by their expiry (the
-- Redis clock), so a node that dies stops counting after the TTL.
--
-- KEYS[1]  interest                 <prefix>market:interest
-- KEYS[2]  the upstream's status    <prefix>market:status
-- ARGV[1]  this node
-- ARGV[2]  time to live of this node's entries, ms
-- ARGV[3]  how many symbols follow to add (or refresh); the rest are removed
-- Returns {every live member, the status ('' when none)}.
local key, status_key = KEYS[1], KEYS[2]
local node, ttl, adds = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
for i = 4, 3 + adds do
  redis.call('ZADD', key, now + ttl, node .. '|' .. ARGV[i])
end
for i = 4 + adds, #ARGV do
  redis.call('ZREM', key, node .. '|' .. ARGV[i])
end
if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl * 2) end
return {redis.call('ZRANGE', key, 0, -1), redis.call('GET', status_key) or ''}

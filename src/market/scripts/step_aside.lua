-- redix market lease, Redis Cluster: a holder whose trades a channel
-- refused (it saw a higher fencing token) gives the lease up and raises
-- the counter past that token, so the next holder's token is higher than
-- any a channel has seen (even after the counter was lost, e.g. by a
-- failover of its master before it replicated).
--
-- KEYS[1]  the lease                <prefix>{market}:lease
-- KEYS[2]  the fencing counter      <prefix>{market}:fence
-- ARGV[1]  the holder's lease value "<node> <fence>"
-- ARGV[2]  the highest token the channel holds
-- Returns 1 if the lease was this holder's (and is free now), else 0.
local cur = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if cur < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0

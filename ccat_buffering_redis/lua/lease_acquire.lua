-- LEASE_ACQUIRE: take the processor lease, or renew it for its holder.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the holder's token; ARGV[3]: the TTL (ms).
-- Returns: 1 if ARGV[2] holds the lease now, 0 if another does.

-- include: prelude

local holder = redis.call('GET', LEASE)
if holder and holder ~= ARGV[2] then return 0 end
-- Delete, then set: a write that frees first lets a full Redis accept the SET.
redis.call('DEL', LEASE)
redis.call('SET', LEASE, ARGV[2], 'PX', ARGV[3])
return 1

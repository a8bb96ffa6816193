-- LEASE_RENEW: extend the processor lease of its holder.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the holder's token; ARGV[3]: the TTL (ms).
-- Returns: 1 if renewed, 0 if ARGV[2] does not hold it.

-- include: prelude

if redis.call('GET', LEASE) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', LEASE, ARGV[3])
return 1

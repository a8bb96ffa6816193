-- LEASE_RELEASE: give up the processor lease.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the holder's token.
-- Returns: 1 if it held the lease (now released), else 0.

-- include: prelude

if redis.call('GET', LEASE) ~= ARGV[2] then return 0 end
redis.call('DEL', LEASE)
return 1

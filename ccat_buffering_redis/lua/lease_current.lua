-- LEASE_CURRENT: who holds the processor lease.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- Returns: {now ms, the holder's token or '', PTTL ms}.

-- include: prelude

return {NOW, redis.call('GET', LEASE) or '', redis.call('PTTL', LEASE)}

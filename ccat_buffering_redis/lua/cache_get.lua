-- CACHE_GET: one buffered record.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the model; ARGV[3]: the record id.
-- Returns: {now ms, PTTL ms, the record text or ''}.

-- include: prelude

local k = BUFFERED .. ARGV[2] .. ':' .. ARGV[3]
return {NOW, redis.call('PTTL', k), redis.call('GET', k) or ''}

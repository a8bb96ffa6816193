-- BUFFER_STATS: the buffer's counts.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- Returns: {now ms, waiting entries, in-flight entries, dead letters, hold PTTL ms}.

-- include: prelude

return {NOW, redis.call('LLEN', BUF), redis.call('HLEN', INF), redis.call('HLEN', LETTERS),
        redis.call('PTTL', HOLD)}

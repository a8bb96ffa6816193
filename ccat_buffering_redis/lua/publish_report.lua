-- PUBLISH_REPORT: store the draining processor's report.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the report (JSON); ARGV[3]: its TTL (ms).
-- Returns: 1.

-- include: prelude

-- Delete, then set: a write that frees first lets a full Redis accept the SET.
redis.call('DEL', PROCESSOR)
redis.call('SET', PROCESSOR, ARGV[2], 'PX', ARGV[3])
return 1

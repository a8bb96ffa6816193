-- STAMP_BUFFER: set the buffer's marker (buffer_epoch).
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the marker '<epoch> <started ms>'; ARGV[3]: '1' to replace one.
-- Returns: 1 if set, 0 if a marker was there and ARGV[3] is not '1'.

-- include: prelude

-- Set the buffer's marker (ARGV[3] '1': even over another). Delete, then
-- set: a write that frees first lets a full Redis accept the SET.
if ARGV[3] ~= '1' and redis.call('EXISTS', EPOCH) == 1 then return 0 end
redis.call('DEL', EPOCH)
redis.call('SET', EPOCH, ARGV[2])
return 1

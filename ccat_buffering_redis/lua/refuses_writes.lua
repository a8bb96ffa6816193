-- REFUSES_WRITES: whether Redis refuses writes that need memory now.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- Returns: '' if it accepts them, else its error text (OOM ...).

-- include: prelude

-- Whether Redis would refuse a write that grows memory now (a full Redis
-- under noeviction): INCRBY 0 is such a write, and changes nothing.
local got = redis.pcall('INCRBY', SEQ, 0)
if type(got) == 'table' then return got['err'] or 'refused' end
return ''

-- CACHE_GET_MANY: buffered records of one model.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the model; ARGV[3...]: record ids.
-- Returns: {now ms, {{PTTL ms, record text or ''}...}}, one pair per id, in order.

-- include: prelude

local out = {}
for i = 3, #ARGV do
  local k = BUFFERED .. ARGV[2] .. ':' .. ARGV[i]
  out[#out + 1] = {redis.call('PTTL', k), redis.call('GET', k) or ''}
end
return {NOW, out}

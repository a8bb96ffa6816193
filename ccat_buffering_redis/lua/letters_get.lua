-- LETTERS_GET: dead letters by id.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2...]: letter ids.
-- Returns: {{letter id, entry, meta JSON}...} for the ids that exist, in order.

-- include: prelude

local out = {}
for i = 2, #ARGV do
  local p = redis.call('HGET', LETTERS, ARGV[i])
  local m = redis.call('HGET', META, ARGV[i])
  if p and m then
    out[#out + 1] = {ARGV[i], p, m}
  end
end
return out

-- CACHE_LEARN: register fields in a model's field index (indexed_fields).
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the model; ARGV[3...]: the fields to index.
-- Returns: 1.

-- include: prelude
-- include: field_index

-- ARGV[2]: the model; ARGV[3...]: fields to index (indexed_fields).
local model = ARGV[2]
local have = registered(model)
for i = 3, #ARGV do
  if not have[ARGV[i]] then learn(model, ARGV[i]) end
end
return 1

-- Fragment: the buffered-record text format, the Lua side of
-- ccat_buffering_redis._values (the one Python module that reads and writes it).

-- A buffered record is a string: a head line
-- '@<created 0|1|2><deleted 0|1><sequence number>:<tx>,<tx>...' then a line
-- '<field>=<JSON value>' per field (names are identifiers; JSON text holds no
-- raw newline). The number places it in its model index (see model_index.lua).
-- Created '2': by the first transaction named (see FLAGS in status_values.lua).
local function join_record(created, deleted, seq, txs, fields)
  local head = '@' .. created .. deleted .. seq .. ':' .. txs
  if fields == '' then return head end
  return head .. '\n' .. fields
end

local function split_record(value)
  local nl = string.find(value, '\n', 1, true)
  local head, fields = value, ''
  if nl then head, fields = string.sub(value, 1, nl - 1), string.sub(value, nl + 1) end
  local colon = string.find(head, ':', 4, true) or #head
  return string.sub(head, 2, 2), string.sub(head, 3, 3), string.sub(head, 4, colon - 1),
    string.sub(head, colon + 1), fields
end

-- The field lines of `later` over those of `earlier`, in the order first written.
local function merge_fields(earlier, later)
  if earlier == '' then return later end
  if later == '' then return earlier end
  local names, values = {}, {}
  for _, text in ipairs({earlier, later}) do
    for line in string.gmatch(text, '[^\n]+') do
      local eq = string.find(line, '=', 1, true)
      if eq then
        local name = string.sub(line, 1, eq - 1)
        if values[name] == nil then names[#names + 1] = name end
        values[name] = string.sub(line, eq)
      end
    end
  end
  local out = {}
  for i, name in ipairs(names) do out[i] = name .. values[name] end
  return table.concat(out, '\n')
end

-- A record's sequence number (its place in the model index), from its head
-- line '@<c><d><number>:<txs>'; nil if none.
local function record_seq(value)
  return tonumber(string.match(value, '^@..(%d+):'))
end

-- A record's field lines ('' if none).
local function fields_of(value)
  local nl = string.find(value, '\n', 1, true)
  if not nl then return '' end
  return string.sub(value, nl + 1)
end

-- The first transaction a record names (its creator, if it created it).
local function record_creator(value)
  return string.match(value, '^@[^:\n]*:([^,\n]*)')
end

-- Fragment: the decimal text of whole numbers, without Lua's own conversion.
--
-- Lua turns a number into text with printf('%.14g'): some 2,000 instructions,
-- as much as a Redis command that the lean path issues. Numbers below 1,000
-- (bucket places and budgets, and bucket numbers up to 128,000 sequence
-- numbers) are formatted once and looked up after; a larger one is the text of
-- its thousands, kept likewise, then its last three digits. A library keeps
-- these tables from call to call (they hold nothing a call brings); a script
-- makes them anew at each call, which costs what the conversions did.
-- Only whole numbers of at most 15 digits (sequence numbers, buckets, places).
local DECIMAL = {small = {}, padded = {}, high = {}, highs = 0} -- kept across calls

local function decimal(n)
  local small = DECIMAL.small
  local text = small[n]
  if text then return text end
  if n < 1000 then
    text = string.format('%d', n)
    small[n] = text
    return text
  end
  local low = n % 1000
  local high = (n - low) / 1000
  local head = DECIMAL.high[high]
  if not head then
    -- The thousands of the numbers a site is at: a few at a time; the
    -- table starts again rather than grow as the numbers do.
    if DECIMAL.highs >= 64 then DECIMAL.high, DECIMAL.highs = {}, 0 end
    head = decimal(high)
    DECIMAL.high[high] = head
    DECIMAL.highs = DECIMAL.highs + 1
  end
  local tail = DECIMAL.padded[low]
  if not tail then
    tail = string.format('%03d', low)
    DECIMAL.padded[low] = tail
  end
  return head .. tail
end

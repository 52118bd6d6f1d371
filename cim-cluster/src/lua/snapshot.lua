-- An account's sessions as a bind sees them. ARGV: prefix, uid.
-- Returns: version ('' when none), then per session: sid, value, live (0/1).
local now = now_ms()
local fields = redis.call('HGETALL', P .. 's:' .. ARGV[2])
local out = { '' }
for j = 1, #fields, 2 do
  local sid = fields[j]
  if sid == '_v' then
    out[1] = fields[j + 1]
  else
    local nid = owner_of(sid)
    out[#out + 1] = sid
    out[#out + 1] = fields[j + 1]
    out[#out + 1] = (nid and is_live(nid, now)) and 1 or 0
  end
end
return out

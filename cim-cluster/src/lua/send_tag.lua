-- A message for every connection with tag ARGV[2]: one inbox entry per live node that has
-- some. ARGV: prefix, tag, message. Returns the connections it went to.
local now = now_ms()
local members = redis.call('HGETALL', P .. 't:' .. ARGV[2])
local delivered = 0
for j = 1, #members, 2 do
  local nid, count = members[j], tonumber(members[j + 1])
  if count > 0 and is_live(nid, now) then
    redis.call('XADD', inbox(nid), '*', 'k', 't', 'g', ARGV[2], 'p', ARGV[3])
    delivered = delivered + count
  end
end
return delivered

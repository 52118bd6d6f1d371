-- Removes dead node ARGV[2]'s sessions of the accounts ARGV[3..].
local nid = ARGV[2]
local mark = nid .. '/'
for i = 3, #ARGV do
  local key = P .. 's:' .. ARGV[i]
  local changed = false
  for _, sid in ipairs(redis.call('HKEYS', key)) do
    if string.sub(sid, 1, #mark) == mark then
      redis.call('HDEL', key, sid)
      changed = true
    end
  end
  if changed then
    touch(key)
  end
  redis.call('HDEL', P .. 'n:' .. nid .. ':u', ARGV[i])
end
return 1

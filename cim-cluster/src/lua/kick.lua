-- An operator's kick of every session of an account: removed from the registry, each live one
-- sent the kick notice (naming the operator) through its node's inbox. ARGV: prefix, uid, the
-- operator's name. Returns how many live ones.
local uid = ARGV[2]
local operator = ARGV[3]
local key = P .. 's:' .. uid
local now = now_ms()
local fields = redis.call('HGETALL', key)
local kicked = 0
for j = 1, #fields, 2 do
  local sid = fields[j]
  if sid ~= '_v' then
    redis.call('HDEL', key, sid)
    local nid = owner_of(sid)
    if nid then
      counted(nid, uid, -1)
      if is_live(nid, now) then
        kicked = kicked + 1
        redis.call('XADD', inbox(nid), '*', 'k', 'x', 'u', uid, 'c', string.sub(sid, #nid + 2),
          'n', '1', 'd', operator, 'o', '1')
      end
    end
  end
end
if #fields > 0 then
  touch(key)
end
return kicked

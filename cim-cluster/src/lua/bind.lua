-- Commits a bind decided on a snapshot, if the account's sessions did not change since.
-- ARGV: prefix, uid, version seen, this node's id, new sid, new value, r, then per session to
-- remove: sid, how ('k': kick notice and close, 'c': close silently, 'd': a dead node's,
-- dropped), the new device's name. Sessions on other live nodes get a `x` entry in their
-- node's inbox. Returns 1, or 0 when the version changed (decide again).
local uid = ARGV[2]
local key = P .. 's:' .. uid
local v = redis.call('HGET', key, '_v') or ''
if v ~= ARGV[3] then
  return 0
end
local me = ARGV[4]
local r = tonumber(ARGV[7])
for i = 0, r - 1 do
  local sid, how, name = ARGV[8 + i * 3], ARGV[9 + i * 3], ARGV[10 + i * 3]
  if redis.call('HDEL', key, sid) == 1 then
    local nid = owner_of(sid)
    if nid then
      counted(nid, uid, -1)
      if how ~= 'd' and nid ~= me then
        redis.call('XADD', inbox(nid), '*', 'k', 'x', 'u', uid, 'c', string.sub(sid, #nid + 2),
          'n', how == 'k' and '1' or '0', 'd', name)
      end
    end
  end
end
if redis.call('HSET', key, ARGV[5], ARGV[6]) == 1 then
  counted(me, uid, 1)
end
redis.call('HSET', key, '_v', redis.call('INCR', P .. 'ver'))
return 1

-- Forgets one session (a no-op when it is gone). ARGV: prefix, uid, sid.
local uid = ARGV[2]
local key = P .. 's:' .. uid
if redis.call('HDEL', key, ARGV[3]) == 1 then
  local nid = owner_of(ARGV[3])
  if nid then
    counted(nid, uid, -1)
  end
  touch(key)
  return 1
end
return 0

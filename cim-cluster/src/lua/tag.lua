-- Counts connections of node ARGV[2] with tag ARGV[3] up or down by ARGV[4].
local nid, tag, delta = ARGV[2], ARGV[3], tonumber(ARGV[4])
if not redis.call('ZSCORE', P .. 'nodes', nid) then
  return 0
end
local t = P .. 't:' .. tag
if redis.call('HINCRBY', t, nid, delta) <= 0 then
  redis.call('HDEL', t, nid)
end
local mine = P .. 'n:' .. nid .. ':t'
if redis.call('HINCRBY', mine, tag, delta) <= 0 then
  redis.call('HDEL', mine, tag)
end
return 1

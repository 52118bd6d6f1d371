-- Forgets dead node ARGV[2] once its sessions and inbox are dealt with.
local nid = ARGV[2]
local mine = P .. 'n:' .. nid .. ':t'
local tags = redis.call('HKEYS', mine)
for _, tag in ipairs(tags) do
  redis.call('HDEL', P .. 't:' .. tag, nid)
end
redis.call('DEL', mine, P .. 'n:' .. nid .. ':u', inbox(nid), P .. 'node:' .. nid)
redis.call('ZREM', P .. 'nodes', nid)
redis.call('ZREM', P .. 'conns', nid)
redis.call('ZREM', P .. 'load', nid)
return 1

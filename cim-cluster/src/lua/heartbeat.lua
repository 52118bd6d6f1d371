-- A node's heartbeat: moves its deadline, notes when it beat (dispatch passes over a node that
-- has missed beats) and sets its load back to its sessions (dropping the dispatch reservations
-- since the last beat). ARGV: prefix, nid, epoch, deadline (ms).
-- Returns {'ok'}, {'epoch', current} when Redis lost its data (or another epoch began), or
-- {'gone'} when the node was reaped meanwhile.
local nid = ARGV[2]
local epoch = redis.call('GET', P .. 'epoch')
if epoch ~= ARGV[3] then
  return { 'epoch', epoch or '' }
end
if not redis.call('ZSCORE', P .. 'nodes', nid) then
  return { 'gone' }
end
local now = now_ms()
redis.call('ZADD', P .. 'nodes', now + tonumber(ARGV[4]), nid)
redis.call('HSET', P .. 'node:' .. nid, 'beat', now)
redis.call('ZADD', P .. 'load', redis.call('ZSCORE', P .. 'conns', nid) or 0, nid)
return { 'ok' }

-- Registers a node. ARGV: prefix, nid, name, node number, deadline (ms), an epoch to set if
-- there is none, draining ('1' or '0'), heartbeat (ms), then its addresses: tcp, websocket,
-- http, tls, wss, xml.
-- Refuses when a live node has the same name or number.
-- Returns {'ok', epoch} or {'taken', nid, name, number}.
local nid, name, number, deadline = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = now_ms()
for _, other in ipairs(redis.call('ZRANGEBYSCORE', P .. 'nodes', '(' .. now, '+inf')) do
  if other ~= nid then
    local h = redis.call('HMGET', P .. 'node:' .. other, 'name', 'node_id')
    if h[1] == name or h[2] == number then
      return { 'taken', other, h[1] or '', h[2] or '' }
    end
  end
end
redis.call('SET', P .. 'epoch', ARGV[6], 'NX')
redis.call('ZADD', P .. 'nodes', now + deadline, nid)
redis.call('ZADD', P .. 'conns', 'NX', 0, nid)
redis.call('ZADD', P .. 'load', 'NX', 0, nid)
redis.call('HSET', P .. 'node:' .. nid, 'name', name, 'node_id', number, 'draining', ARGV[7],
  'beat', now, 'every', ARGV[8], 'tcp', ARGV[9], 'websocket', ARGV[10], 'http', ARGV[11],
  'tls', ARGV[12], 'wss', ARGV[13], 'xml', ARGV[14])
return { 'ok', redis.call('GET', P .. 'epoch') }

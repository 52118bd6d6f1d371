-- The live nodes (ARGV[2] = 'live') or the dead ones still registered ('dead'), by id.
local now = now_ms()
if ARGV[2] == 'dead' then
  return redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now)
end
return redis.call('ZRANGEBYSCORE', P .. 'nodes', '(' .. now, '+inf')

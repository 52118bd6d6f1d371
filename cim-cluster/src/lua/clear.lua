-- Deletes every stored message of ARGV[2] (its sequence goes on). Returns how many.
local q = P .. 'q:' .. ARGV[2]
local n = redis.call('XLEN', q)
redis.call('DEL', q)
redis.call('SREM', P .. 'qidx', ARGV[2])
return n

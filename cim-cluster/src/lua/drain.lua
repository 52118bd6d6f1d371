-- Marks node ARGV[2] draining (ARGV[3] = '1') or not ('0').
redis.call('HSET', P .. 'node:' .. ARGV[2], 'draining', ARGV[3])
return 1

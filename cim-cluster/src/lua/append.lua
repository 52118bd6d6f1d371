-- Stores one message. ARGV: prefix, uid, message, cap. Returns {seq, dropped}.
local seq, dropped = store(ARGV[2], ARGV[3], tonumber(ARGV[4]), now_ms())
return { seq, dropped }

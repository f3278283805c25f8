"""The Lua scripts through which every chain-record write goes.

Redis runs a script atomically, so a step's effects, its checkpoint and its log lines land
together or not at all.  Each script that changes a running chain is *fenced*: it first
checks that the caller still owns the chain (``owner`` and ``epoch``, the fencing token
bumped by every claim) and that the chain is at the step the caller thinks it is.  A VM
that was presumed dead and comes back therefore cannot commit a stale step.

Payloads are msgpack maps (Redis' Lua has ``cmsgpack``), all values already strings, so a
script never has to guess how Python meant a number.
"""

from __future__ import annotations

from typing import Any

import msgpack
import redis
from redis.commands.core import Script

# KEYS: chain, chains index, starts stream.
# ARGV: id, call, now, enqueue ("1"/"0"), status, error, error_kind, retention.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', ARGV[5], 'step', '0', 'call', ARGV[2],
           'created', ARGV[3], 'updated', ARGV[3], 'epoch', '0', 'attempts', '0')
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[6], 'error_kind', ARGV[7], 'finished', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  local ended = (string.gsub(KEYS[1], ':chain:{', ':end:{', 1))
  redis.call('XADD', ended, '*', 'status', ARGV[5])
  redis.call('EXPIRE', ended, ARGV[8])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] == '1' then redis.call('XADD', KEYS[3], '*', 'chain', ARGV[1]) end
return 1
"""

# KEYS: chain, results.  ARGV: owner, now, heartbeat key prefix, mode ("new"/"reclaim").
# A "reclaim" (an entry taken over from another VM's pending list) may take a *running*
# chain, but only if its owner's heartbeat has expired — or the owner is us, restarted.
# Returns {'ok', epoch, step, call, join, results...}, {'alive', owner}, {'skip', status}
# or {'missing'}.
CLAIM = """
local st = redis.call('HMGET', KEYS[1], 'status', 'step', 'call', 'join', 'owner')
if not st[1] then return {'missing'} end
if st[1] == 'running' and ARGV[4] == 'reclaim' then
  local owner = st[5] or ''
  if owner ~= ARGV[1] and owner ~= '' and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    return {'alive', owner}
  end
elseif st[1] ~= 'queued' then
  return {'skip', st[1]}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1], 'updated', ARGV[2])
redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
local out = {'ok', tostring(epoch), st[2] or '0', st[3] or '', st[4] or ''}
if st[4] and st[4] ~= '' then
  local res = redis.call('HGETALL', KEYS[2])
  for i = 1, #res do out[#out + 1] = res[i] end
end
return out
"""

# KEYS: kernel record, then one key per @key argument.  ARGV: digest the caller has cached.
# Returns {kernel_state, kernel_payload, {type, data} per @key}.
PREPARE = """
local out = {}
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'hash' then
  local d = redis.call('HMGET', KEYS[1], 'digest', 'compiled')
  if d[1] and d[1] == ARGV[1] and d[2] == '1' then
    out[1] = 'same'; out[2] = ''
  else
    out[1] = 'hash'; out[2] = redis.call('HGETALL', KEYS[1])
  end
elseif t == 'string' then
  out[1] = 'string'; out[2] = redis.call('GET', KEYS[1])
else
  out[1] = t; out[2] = ''
end
for i = 2, #KEYS do
  local k = KEYS[i]
  local kt = redis.call('TYPE', k)['ok']
  if kt == 'string' then out[#out + 1] = {kt, redis.call('GET', k)}
  elseif kt == 'hash' then out[#out + 1] = {kt, redis.call('HGETALL', k)}
  elseif kt == 'list' then out[#out + 1] = {kt, redis.call('LRANGE', k, 0, -1)}
  elseif kt == 'set' then out[#out + 1] = {kt, redis.call('SMEMBERS', k)}
  elseif kt == 'zset' then out[#out + 1] = {kt, redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')}
  else out[#out + 1] = {kt, ''} end
end
return out
"""

# Shared fence: the caller must own the chain at the step it read.
_FENCE = """
local chain = KEYS[1]
local p = cmsgpack.unpack(ARGV[1])
local cur = redis.call('HMGET', chain, 'owner', 'epoch', 'step', 'status')
if cur[4] ~= 'running' or cur[1] ~= p.owner or cur[2] ~= p.epoch or cur[3] ~= p.step then
  return {'fenced', cur[4] or 'missing'}
end
"""

_LOG = """
for _, entry in ipairs(p.logs) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlog, '*', unpack(entry))
end
"""

_EXPIRE_FINISHED = """
local function announce_end(key, status)
  -- One entry on the chain's "end" stream wakes whoever waits for it (Pyrecks.wait).
  local ended = (string.gsub(key, ':chain:{', ':end:{', 1))
  redis.call('XADD', ended, '*', 'status', status)
  redis.call('EXPIRE', ended, retention)
end
local function expire_chain(key, log, results, status)
  announce_end(key, status)
  redis.call('EXPIRE', key, retention)
  redis.call('EXPIRE', log, retention)
  if redis.call('EXISTS', results) == 1 then redis.call('EXPIRE', results, retention) end
end
"""


def _lua_key_types() -> str:
    from pyrecks.vm.effects import KEY_TYPES

    pairs = ", ".join(f"{cmd} = '{kind}'" for cmd, kind in sorted(KEY_TYPES.items()))
    return f"local KEY_TYPES = {{{pairs}}}\n"


# KEYS: chain, log, kernels set.  ARGV: msgpack payload (see VM._commit), the internal key
# prefix, the log's max length, the retention of finished chains.  What is the same for
# every commit travels as plain arguments or lives in the script, not in the payload, so
# Redis does not decode it again for each step.
COMMIT = (
    _FENCE
    + "local maxlog, retention = ARGV[3], ARGV[4]\n"
    + _lua_key_types()
    + _EXPIRE_FINISHED
    + """
local prefix = ARGV[2]
for _, e in ipairs(p.effects) do
  local cmd, key = e[1], e[2]
  if string.sub(key, 1, string.len(prefix)) == prefix then
    return {'rejected', cmd .. ' ' .. key .. ': keys starting with "' .. prefix ..
            '" belong to pyrecks and cannot be written by effects'}
  end
  if redis.call('SISMEMBER', KEYS[3], key) == 1 then
    return {'rejected', cmd .. ' ' .. key .. ': "' .. key .. '" is a kernel record; ' ..
            'kernels change only through pyrecksc compile'}
  end
  local t = redis.call('TYPE', key)['ok']
  local want = KEY_TYPES[cmd]
  if t == 'hash' and redis.call('HEXISTS', key, 'source') == 1
     and redis.call('HEXISTS', key, 'digest') == 1 then
    return {'rejected', cmd .. ' ' .. key .. ': "' .. key .. '" is a kernel record; ' ..
            'kernels change only through pyrecksc compile'}
  end
  if t ~= 'none' and want ~= 'any' and t ~= want then
    return {'rejected', cmd .. ' ' .. key .. ': the key holds a ' .. t ..
            ' but ' .. cmd .. ' needs a ' .. want}
  end
  if t == 'string' then
    local value = redis.call('GET', key)
    local kprefix = ARGV[5]
    if string.sub(key, 1, string.len(kprefix)) == kprefix and string.find(
        value, 'def ' .. string.sub(key, string.len(kprefix) + 1) .. '(', 1, true) then
      return {'rejected', cmd .. ' ' .. key .. ': "' .. key .. '" holds the source of a ' ..
              'kernel stored as a plain string (the seed way); ' ..
              'kernels change only through pyrecksc compile'}
    end
    if (cmd == 'INCRBY' or cmd == 'INCRBYFLOAT') and tonumber(value) == nil then
      return {'rejected', cmd .. ' ' .. key .. ': the key does not hold a number'}
    end
  end
end
for _, e in ipairs(p.effects) do redis.call(unpack(e)) end
if #p.fields > 0 then redis.call('HSET', chain, unpack(p.fields)) end
"""
    + _LOG
    + """
if p.fanout then
  local f = p.fanout
  redis.call('DEL', f.results)
  for i, b in ipairs(f.branches) do
    redis.call('HSET', b[2], 'id', b[1], 'status', 'queued', 'step', '0', 'call', b[3],
               'created', p.now, 'updated', p.now, 'epoch', '0', 'attempts', '0',
               'parent', f.parent, 'branch', tostring(i - 1))
    redis.call('XADD', f.starts, '*', 'chain', b[1])
  end
end
if p.done then
  expire_chain(chain, KEYS[2], p.done.results, 'done')
  local up = p.done.parent
  if up then
    redis.call('HSET', up.results, up.index, p.done.result)
    local left = redis.call('HINCRBY', up.key, 'pending', -1)
    if left <= 0 and redis.call('HGET', up.key, 'status') == 'waiting' then
      redis.call('HSET', up.key, 'status', 'queued', 'owner', '', 'updated', p.now)
      redis.call('XADD', up.starts, '*', 'chain', up.id)
    end
  end
end
return {'ok'}
"""
)

# KEYS: chain, log.  ARGV: msgpack payload with fields/logs/retention/parent.
FAIL = (
    _FENCE
    + "local maxlog, retention = p.maxlog, p.retention\n"
    + _EXPIRE_FINISHED
    + """
redis.call('HSET', chain, unpack(p.fields))
"""
    + _LOG
    + """
expire_chain(chain, KEYS[2], p.results, 'failed')
redis.call('ZADD', p.failed, p.now, p.id)
local up = p.parent
if up and redis.call('HGET', up.key, 'status') == 'waiting' then
  redis.call('HSET', up.key, 'status', 'failed', 'error', up.error, 'error_kind', 'branch',
             'finished', p.now, 'updated', p.now, 'owner', '')
  redis.call('XADD', up.log, 'MAXLEN', '~', maxlog, '*', 'kind', 'error', 'step',
             redis.call('HGET', up.key, 'step') or '0', 'kernel', '', 'text', up.error,
             'ts', p.now)
  redis.call('EXPIRE', up.key, retention)
  redis.call('EXPIRE', up.log, retention)
  announce_end(up.key, 'failed')
  redis.call('ZADD', p.failed, p.now, up.id)
end
return {'ok'}
"""
)

# KEYS: chain, log, starts stream, failed set.
# ARGV: now, id, parent chain key ('' if none), parent id.
# Puts a failed chain back in the queue at the step that failed (after a fix/hot patch).
RETRY = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'failed' then return st end
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'error', '', 'error_kind', '',
           'traceback', '', 'finished', '', 'updated', ARGV[1], 'attempts', '0')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('DEL', (string.gsub(KEYS[1], ':chain:{', ':end:{', 1)))
redis.call('ZREM', KEYS[4], ARGV[2])
if ARGV[3] ~= '' and redis.call('HGET', ARGV[3], 'status') == 'failed'
   and redis.call('HGET', ARGV[3], 'error_kind') == 'branch' then
  redis.call('HSET', ARGV[3], 'status', 'waiting', 'error', '', 'error_kind', '',
             'finished', '', 'updated', ARGV[1])
  redis.call('PERSIST', ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[4])
end
redis.call('XADD', KEYS[3], '*', 'chain', ARGV[2])
return 'ok'
"""

# KEYS: chain, starts stream.  ARGV: msgpack payload {owner, epoch, step, now}.
# Hands a running chain back to the queue at its last checkpoint (graceful drain).
RELEASE = (
    _FENCE
    + """
redis.call('HSET', chain, 'status', 'queued', 'owner', '', 'updated', p.now)
redis.call('XADD', KEYS[2], '*', 'chain', redis.call('HGET', chain, 'id'))
return {'ok'}
"""
)

# KEYS: chain, log.  ARGV: now, reason, retention, maxlog.
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'done' or st == 'failed' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'owner', '', 'error', ARGV[2],
           'error_kind', 'cancelled', 'finished', ARGV[1], 'updated', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'end', 'step',
           redis.call('HGET', KEYS[1], 'step') or '0', 'kernel', '', 'text', ARGV[2],
           'ts', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local ended = (string.gsub(KEYS[1], ':chain:{', ':end:{', 1))
redis.call('XADD', ended, '*', 'status', 'cancelled')
redis.call('EXPIRE', ended, ARGV[3])
return 'ok'
"""


class Scripts:
    """The scripts registered on one Redis client (EVALSHA, re-loaded after a restart)."""

    def __init__(self, r: redis.Redis) -> None:
        self.create: Script = r.register_script(CREATE)
        self.claim: Script = r.register_script(CLAIM)
        self.prepare: Script = r.register_script(PREPARE)
        self.commit: Script = r.register_script(COMMIT)
        self.fail: Script = r.register_script(FAIL)
        self.release: Script = r.register_script(RELEASE)
        self.cancel: Script = r.register_script(CANCEL)
        self.retry: Script = r.register_script(RETRY)


def pack(payload: dict[str, Any]) -> bytes:
    """Encode a script payload; every leaf must already be ``str``/``bytes``."""
    return msgpack.packb(payload, use_bin_type=False)

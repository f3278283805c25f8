"""The Lua side of the chain store: every script, its KEYS, ARGV and reply.

Each script's comment lists its KEYS and ARGV line by line and the replies it gives; the
Python side (:mod:`pyrecks.vm.chainstore`) builds those arguments in one place.  Every
reply is a table whose first element is a status word.
"""

from __future__ import annotations

#: The consumer group every VM reads the starts and resume streams through.
GROUP = "pyrecks-vms"

#: Seconds a chain's end stream outlives the chain's end: waiters re-read the record before
#: they block on it, so it is needed only for a moment (kept for the retention, it was half
#: of what a finished chain cost).
END_TTL = 60

#: A chain's trace context, so that every VM continues the same OpenTelemetry trace
#: (pyrecks/observe/tracing.py): record fields holding W3C ``traceparent`` text.  TRACE is
#: the span the chain's steps are children of (its root span, or for a fan-out branch the
#: fan-out step's span); TRACE_JOIN is the fan-out step's span, which the pending join
#: continues.  CLAIM stores the first claimer's proposal and returns both; COMMIT writes a
#: fan-out's context into its branches and the parent's TRACE_JOIN.  Absent: not traced.
TRACE = "trace"
TRACE_JOIN = "trace_join"

#: A pinned chain's record field: the VM that alone may run it (``pyrecks run --local``).
#: CREATE records it, CLAIM elsewhere answers "pinned" while that VM beats, COMMIT copies
#: it into a fan-out's branches, and it lapses with the VM's heartbeat (see LAPSE).
PIN = "pin"

# KEYS: chain, chains index, starts stream (for a pinned chain: its VM's pinned stream),
# chain's end stream, failed set, [pinned chains only: the pins set].
# ARGV: id, call, now, enqueue ("1"/"0"), status, error, error_kind, retention, pin ('').
# Reply: {'ok'} or {'exists', status, call}.  Clients run it too: only commands the client
# ACL role has (pyrecks/acl.py) — HGET, not HMGET (a pinned start needs the VM role).
CREATE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status then return {'exists', status, redis.call('HGET', KEYS[1], 'call') or ''} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', ARGV[5], 'step', '0', 'call', ARGV[2],
           'created', ARGV[3], 'updated', ARGV[3], 'epoch', '0', 'attempts', '0')
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[6], 'error_kind', ARGV[7], 'finished', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('XADD', KEYS[4], '*', 'status', ARGV[5])
  redis.call('EXPIRE', KEYS[4], END_TTL)
  redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[9] and ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'PIN', ARGV[9])
  redis.call('SADD', KEYS[6], ARGV[9])
end
if ARGV[4] == '1' then redis.call('XADD', KEYS[3], '*', 'chain', ARGV[1]) end
return {'ok'}
""".replace("END_TTL", str(END_TTL)).replace("'PIN'", f"'{PIN}'")

# KEYS: chain, its results, heartbeat of the owner we expect, that owner's "asks" set,
# heartbeat of the VM we expect the chain pinned to (any key if none).
# ARGV: claimer, now, mode ("new"/"reclaim"), expected owner, chain id, asks ttl (s),
# proposed trace ('' or a W3C traceparent: stored only if the chain has none, see TRACE),
# expected pin ('').
# A chain pinned to another VM whose heartbeat lives is not ours to run: {'pinned', vm}
# (the caller hands the entry to that VM's pinned stream).  A pin whose VM stopped beating
# has lapsed: the chain is claimed as if it had none.
# A "reclaim" (an entry taken over from another VM's pending list) may take a *running*
# chain, but only if its owner's heartbeat has expired — or the owner is us, restarted.
# If the owner lives, the chain id goes into its "asks" set: an owner that does not run the
# chain (it forgot it, e.g. Redis lost the last second of its AOF) releases it.
# Reply: {'ok', epoch, step, call, join, parent, branch, trace, trace_join, pin,
# results...}, {'alive', owner}, {'pin', vm} (not the pin expected: ask again), {'pinned', vm},
# {'moved', owner} (not the owner expected: ask again), {'skip', status, owner} or
# {'missing'}.
CLAIM = """
local st = redis.call('HMGET', KEYS[1], 'status', 'step', 'call', 'join', 'owner', 'parent',
                      'branch', 'TRACE', 'TRACE_JOIN', 'PIN')
if not st[1] then return {'missing'} end
local pin = st[10] or ''
if pin ~= '' and pin ~= ARGV[1] and (st[1] == 'queued' or st[1] == 'running') then
  if pin ~= ARGV[8] then return {'pin', pin} end
  if redis.call('EXISTS', KEYS[5]) == 1 then return {'pinned', pin} end
end
if st[1] == 'running' and ARGV[3] == 'reclaim' then
  local owner = st[5] or ''
  if owner ~= ARGV[1] and owner ~= '' then
    if owner ~= ARGV[4] then return {'moved', owner} end
    if redis.call('EXISTS', KEYS[3]) == 1 then
      redis.call('SADD', KEYS[4], ARGV[5])
      redis.call('EXPIRE', KEYS[4], ARGV[6])
      return {'alive', owner}
    end
  end
elseif st[1] ~= 'queued' then
  return {'skip', st[1], st[5] or ''}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1], 'updated', ARGV[2])
redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
local trace = st[8] or ''
if trace == '' and ARGV[7] and ARGV[7] ~= '' then
  trace = ARGV[7]
  redis.call('HSET', KEYS[1], 'TRACE', trace)
end
local out = {'ok', tostring(epoch), st[2] or '0', st[3] or '', st[4] or '', st[6] or '',
             st[7] or '', trace, st[9] or '', pin}
if st[4] and st[4] ~= '' then
  local res = redis.call('HGETALL', KEYS[2])
  for i = 1, #res do out[#out + 1] = res[i] end
end
return out
""".replace("'TRACE_JOIN'", f"'{TRACE_JOIN}'").replace("'TRACE'", f"'{TRACE}'").replace(
    "'PIN'", f"'{PIN}'"
)

def _lua_looks_like_kernel() -> str:
    """The store's "this string is kernel NAME's source" rule, as a Lua function: one rule
    for the store and the effect guard (tests/test_compiler_store_rule.py)."""
    from pyrecks.compiler.store import LUA_LOOKS_LIKE_KERNEL

    return f"local function looks_like_kernel(value, name)\n  return {LUA_LOOKS_LIKE_KERNEL}\nend\n"


def _lua_kernel_keys() -> str:
    """Which keys hold kernels, as Lua functions over the kernel prefix ``kprefix``: the
    store's rule (a hash with ``source`` and a digest, or whose source defines the name; a
    string that is the name's source), one piece for the effect guard and the input guard."""
    return (
        _lua_looks_like_kernel()
        + """
local function kernel_name(key, kprefix)
  -- The kernel a key would hold (nil: not a kernel key), by the store's key rule.
  if string.sub(key, 1, string.len(kprefix)) ~= kprefix then return nil end
  return string.sub(key, string.len(kprefix) + 1)
end
local function holds_kernel(key, kprefix)
  local t, name = redis.call('TYPE', key)['ok'], kernel_name(key, kprefix)
  if t == 'hash' and redis.call('HEXISTS', key, 'source') == 1 then
    if redis.call('HEXISTS', key, 'digest') == 1 then return true end
    return name ~= nil and looks_like_kernel(redis.call('HGET', key, 'source'), name)
  end
  return t == 'string' and name ~= nil and looks_like_kernel(redis.call('GET', key), name)
end
"""
    )


# KEYS: kernel record, then one key per @key argument.
# ARGV: digest the caller has cached, sha1 of the source the caller has cached, the internal
# key prefix, the kernel prefix.  An @key may not name a pyrecks key (other chains' records,
# results, logs) nor a kernel: the same keys effects may not write.
# "same" needs the stored digest *and* the stored source to be the caller's: a hot patch by
# ``HSET name source …`` alone leaves a stale digest behind.
# Reply: {'ok', kernel_state, kernel_payload, {type, data} per @key}, or
# {'refused', key, 'internal' | 'kernel'}.
PREPARE = (
    _lua_kernel_keys()
    + """
local prefix, kprefix = ARGV[3], ARGV[4]
for i = 2, #KEYS do
  REFUSE_KEY
end
local out = {'ok'}
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'hash' then
  local d = redis.call('HMGET', KEYS[1], 'digest', 'compiled', 'source')
  if d[1] and d[1] == ARGV[1] and d[2] == '1' and d[3]
     and redis.sha1hex(d[3]) == ARGV[2] then
    out[2] = 'same'; out[3] = ''
  else
    out[2] = 'hash'; out[3] = redis.call('HGETALL', KEYS[1])
  end
elseif t == 'string' then
  out[2] = 'string'; out[3] = redis.call('GET', KEYS[1])
else
  out[2] = t; out[3] = ''
end
for i = 2, #KEYS do
  READ_KEY
end
return out
"""
)

# KEYS: the keys to read (on a cluster, the ``@key`` arguments of one slot: PREPARE reads
# only those in its kernel's slot).  ARGV: the internal key prefix, the kernel prefix.
# Reply: {'ok', {type, data} per key}, or {'refused', key, why}, as PREPARE gives them.
READ = (
    _lua_kernel_keys()
    + """
local prefix, kprefix = ARGV[1], ARGV[2]
for i = 1, #KEYS do
  REFUSE_KEY
end
local out = {'ok'}
for i = 1, #KEYS do
  READ_KEY
end
return out
"""
)

# An @key may not name a pyrecks key nor a kernel: the keys effects may not write either.
_REFUSE_KEY = """local k = KEYS[i]
  if string.sub(k, 1, string.len(prefix)) == prefix then return {'refused', k, 'internal'} end
  if holds_kernel(k, kprefix) then return {'refused', k, 'kernel'} end"""

_READ_KEY = """local k = KEYS[i]
  local kt = redis.call('TYPE', k)['ok']
  if kt == 'string' then out[#out + 1] = {kt, redis.call('GET', k)}
  elseif kt == 'hash' then out[#out + 1] = {kt, redis.call('HGETALL', k)}
  elseif kt == 'list' then out[#out + 1] = {kt, redis.call('LRANGE', k, 0, -1)}
  elseif kt == 'set' then out[#out + 1] = {kt, redis.call('SMEMBERS', k)}
  elseif kt == 'zset' then out[#out + 1] = {kt, redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')}
  else out[#out + 1] = {kt, ''} end"""
PREPARE = PREPARE.replace("REFUSE_KEY", _REFUSE_KEY).replace("READ_KEY", _READ_KEY)
READ = READ.replace("REFUSE_KEY", _REFUSE_KEY).replace("READ_KEY", _READ_KEY)

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

_EXPIRE_FINISHED = f"""
local END_TTL = {END_TTL}
local function announce_end(ended, status)
  -- One entry on the chain's "end" stream wakes whoever waits for it (Pyrecks.wait).
  redis.call('XADD', ended, 'MAXLEN', '1', '*', 'status', status)
  redis.call('EXPIRE', ended, END_TTL)
end
local function expire_chain(key, log, ended, results, status)
  announce_end(ended, status)
  redis.call('EXPIRE', key, retention)
  redis.call('EXPIRE', log, retention)
  if redis.call('EXISTS', results) == 1 then redis.call('EXPIRE', results, retention) end
end
"""


def _lua_key_types() -> str:
    from pyrecks.vm.effects import KEY_TYPES

    pairs = ", ".join(f"{cmd} = '{kind}'" for cmd, kind in sorted(KEY_TYPES.items()))
    return f"local KEY_TYPES = {{{pairs}}}\n"


_EFFECT_CHECK = (
    _lua_key_types()
    + _lua_kernel_keys()
    + """
local function effect_problem(e, key, prefix, kprefix, kernels)
  -- Why effect e (on key) may not be applied, or nil.  kernels: the kernels set, if the
  -- script can see it (not on a cluster, where it lives in another slot: there the key's
  -- own content tells a kernel record, compiled or seed-style).
  local cmd = e[1]
  if string.sub(key, 1, string.len(prefix)) == prefix then
    return cmd .. ' ' .. key .. ': keys starting with "' .. prefix ..
           '" belong to pyrecks and cannot be written by effects'
  end
  if kernels and redis.call('SISMEMBER', kernels, key) == 1 then
    return cmd .. ' ' .. key .. ': "' .. key .. '" is a kernel record; ' ..
           'kernels change only through pyrecksc compile'
  end
  local t = redis.call('TYPE', key)['ok']
  local want = KEY_TYPES[cmd]
  local name = kernel_name(key, kprefix)
  if t == 'hash' and redis.call('HEXISTS', key, 'source') == 1 and (
      redis.call('HEXISTS', key, 'digest') == 1
      or (name and looks_like_kernel(redis.call('HGET', key, 'source'), name))) then
    return cmd .. ' ' .. key .. ': "' .. key .. '" is a kernel record; ' ..
           'kernels change only through pyrecksc compile'
  end
  if t ~= 'none' and want ~= 'any' and t ~= want then
    return cmd .. ' ' .. key .. ': the key holds a ' .. t .. ' but ' .. cmd .. ' needs a ' .. want
  end
  if name then
    -- Effects may not create what the VM would take for a kernel either.
    local made = nil
    if cmd == 'SET' then made = e[3] end
    if cmd == 'HSET' then
      for i = 3, #e - 1, 2 do if e[i] == 'source' then made = e[i + 1] end end
    end
    if made and looks_like_kernel(made, name) then
      return cmd .. ' ' .. key .. ': the value is the source of a kernel ' ..
             'named "' .. name .. '"; kernels are stored only through pyrecksc compile'
    end
  end
  if t == 'string' then
    local value = redis.call('GET', key)
    if name and looks_like_kernel(value, name) then
      return cmd .. ' ' .. key .. ': "' .. key .. '" holds the source of a ' ..
             'kernel stored as a plain string (the seed way); ' ..
             'kernels change only through pyrecksc compile'
    end
    if (cmd == 'INCRBY' or cmd == 'INCRBYFLOAT') and tonumber(value) == nil then
      return cmd .. ' ' .. key .. ': the key does not hold a number'
    end
  end
  return nil
end
"""
)

# KEYS: chain, log, kernels set (on a cluster: the shard's outbox), end stream, results,
# resume stream (the committing VM's
# pinned stream for a chain pinned to it: its branches and join stay with it), then the keys
# the payload refers to by index (parent chain and results, branch chains, effect keys).
# A fan-out's branches inherit the chain's PIN.
# ARGV: msgpack Commit payload, the internal key prefix, the log's max length, the
# retention of finished chains, the kernel prefix.  What is the same for every commit
# travels as plain arguments, not in the payload, so Redis does not decode it each step.
# A fan-out's payload may carry ``trace`` (the fan-out step's traceparent): it becomes the
# branches' TRACE and the chain's TRACE_JOIN.  On a cluster, ``owed`` (the effects this step
# owes, see APPLY) is recorded in the record and the chain listed in the outbox (KEYS[3]);
# ``delivered`` (a step whose owed effects were delivered) clears its outbox entry.
# A fan-out's ``budget`` ({root: index of the root chain's record, max}) caps the branches
# a root chain and all its branches create in all (policy ``max_descendants``).
# Reply: {'ok'}, {'fenced', status}, {'rejected', reason} or {'budget', max}.
COMMIT = (
    _FENCE
    + "local maxlog, retention = ARGV[3], ARGV[4]\n"
    + _EFFECT_CHECK
    + _EXPIRE_FINISHED
    + """
local prefix, kprefix = ARGV[2], ARGV[5]
for _, e in ipairs(p.effects) do
  local why = effect_problem(e, KEYS[tonumber(e[2])], prefix, kprefix, KEYS[3])
  if why then return {'rejected', why} end
end
if p.budget then
  -- Every branch a root chain and its branches ever make counts against one budget, so
  -- nested fan-outs (each at most 256 wide) cannot grow a start without bound.
  local root, n = KEYS[tonumber(p.budget.root)], #p.fanout
  if redis.call('HINCRBY', root, 'descendants', n) > tonumber(p.budget.max) then
    redis.call('HINCRBY', root, 'descendants', -n)
    return {'budget', p.budget.max}
  end
end
for _, e in ipairs(p.effects) do
  redis.call(e[1], KEYS[tonumber(e[2])], unpack(e, 3))
end
if #p.fields > 0 then redis.call('HSET', chain, unpack(p.fields)) end
if p.owed then
  redis.call('HSET', chain, 'owed', p.owed.effects, 'owed_step', p.owed.step)
  redis.call('SADD', KEYS[3], p.owed.id)
elseif p.delivered and redis.call('HGET', chain, 'owed_step') == p.delivered.step then
  redis.call('HDEL', chain, 'owed', 'owed_step')
  redis.call('SREM', KEYS[3], p.delivered.id)
end
"""
    + _LOG
    + """
if p.fanout then
  redis.call('DEL', KEYS[5])
  if p.trace then redis.call('HSET', chain, 'TRACE_JOIN', p.trace) end
  local pin = redis.call('HGET', chain, 'PIN')
  for i, b in ipairs(p.fanout) do
    redis.call('HSET', KEYS[tonumber(b[2])], 'id', b[1], 'status', 'queued', 'step', '0',
               'call', b[3], 'created', p.now, 'updated', p.now, 'epoch', '0',
               'attempts', '0', 'parent', p.id, 'branch', tostring(i - 1))
    if p.trace then redis.call('HSET', KEYS[tonumber(b[2])], 'TRACE', p.trace) end
    if pin then redis.call('HSET', KEYS[tonumber(b[2])], 'PIN', pin) end
    redis.call('XADD', KEYS[6], '*', 'chain', b[1])
  end
end
if p.done then
  expire_chain(chain, KEYS[2], KEYS[4], KEYS[5], 'done')
  local up = p.up
  if up then
    local upkey = KEYS[tonumber(up.key)]
    redis.call('HSET', KEYS[tonumber(up.results)], up.index, p.done)
    local left = redis.call('HINCRBY', upkey, 'pending', -1)
    if left <= 0 and redis.call('HGET', upkey, 'status') == 'waiting' then
      redis.call('HSET', upkey, 'status', 'queued', 'owner', '', 'updated', p.now)
      redis.call('XADD', KEYS[6], '*', 'chain', up.id)
    end
  end
end
return {'ok'}
""".replace("'TRACE_JOIN'", f"'{TRACE_JOIN}'").replace("'TRACE'", f"'{TRACE}'")
    .replace("'PIN'", f"'{PIN}'")
)

# KEYS: chain, log, end stream, results, failed set, [parent chain, parent log, parent end].
# ARGV: msgpack Failure payload, the log's max length, the retention of finished chains.
# Reply: {'ok'} or {'fenced', status}.
FAIL = (
    _FENCE
    + "local maxlog, retention = ARGV[2], ARGV[3]\n"
    + _EXPIRE_FINISHED
    + """
redis.call('HSET', chain, unpack(p.fields))
"""
    + _LOG
    + """
expire_chain(chain, KEYS[2], KEYS[3], KEYS[4], 'failed')
redis.call('ZADD', KEYS[5], p.now, p.id)
if p.parent and redis.call('HGET', KEYS[6], 'status') == 'waiting' then
  redis.call('HSET', KEYS[6], 'status', 'failed', 'error', p.parent_error,
             'error_kind', 'branch', 'finished', p.now, 'updated', p.now, 'owner', '')
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', maxlog, '*', 'kind', 'error', 'step',
             redis.call('HGET', KEYS[6], 'step') or '0', 'kernel', '', 'text',
             p.parent_error, 'ts', p.now)
  redis.call('EXPIRE', KEYS[6], retention)
  redis.call('EXPIRE', KEYS[7], retention)
  announce_end(KEYS[8], 'failed')
  redis.call('ZADD', KEYS[5], p.now, p.parent)
end
return {'ok'}
"""
)

# KEYS: chain, log, starts stream, failed set, end stream, [parent chain].
# ARGV: now, id, parent id ('' if none).
# Puts a failed chain back in the queue at the step that failed (after a fix/hot patch).
# Reply: {'ok'}, {'missing'} or {'skip', status}.
RETRY = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if st ~= 'failed' then return {'skip', st} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'error', '', 'error_kind', '',
           'traceback', '', 'finished', '', 'updated', ARGV[1], 'attempts', '0')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('DEL', KEYS[5])
redis.call('ZREM', KEYS[4], ARGV[2])
if ARGV[3] ~= '' and redis.call('HGET', KEYS[6], 'status') == 'failed'
   and redis.call('HGET', KEYS[6], 'error_kind') == 'branch' then
  redis.call('HSET', KEYS[6], 'status', 'waiting', 'error', '', 'error_kind', '',
             'finished', '', 'updated', ARGV[1])
  redis.call('PERSIST', KEYS[6])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
redis.call('XADD', KEYS[3], '*', 'chain', ARGV[2])
return {'ok'}
"""

# KEYS: chain, resume stream.  ARGV: msgpack {owner, epoch, step, now}.
# Hands a running chain back to the queue at its last checkpoint (graceful drain).
# Reply: {'ok'} or {'fenced', status}.
RELEASE = (
    _FENCE
    + """
redis.call('HSET', chain, 'status', 'queued', 'owner', '', 'updated', p.now)
redis.call('XADD', KEYS[2], '*', 'chain', redis.call('HGET', chain, 'id'))
return {'ok'}
"""
)

# KEYS: chain, resume stream.  ARGV: owner, epoch, now.
# A VM gives back a chain Redis says it runs but it does not (it forgot it): fenced on
# owner and epoch, so a claim that raced with the question wins.
# Reply: {'ok'} or {'fenced', status}.
DISOWN = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'status', 'id')
if cur[3] ~= 'running' or cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then
  return {'fenced', cur[3] or 'missing'}
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'updated', ARGV[3])
redis.call('XADD', KEYS[2], '*', 'chain', cur[4])
return {'ok'}
"""

# KEYS: chain, log, end stream.  ARGV: now, reason, retention, maxlog.
# Reply: {'ok'}, {'missing'} or {'skip', status} (it had already ended).
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if st == 'done' or st == 'failed' or st == 'cancelled' then return {'skip', st} end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'owner', '', 'error', ARGV[2],
           'error_kind', 'cancelled', 'finished', ARGV[1], 'updated', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'end', 'step',
           redis.call('HGET', KEYS[1], 'step') or '0', 'kernel', '', 'text', ARGV[2],
           'ts', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'status', 'cancelled')
redis.call('EXPIRE', KEYS[3], END_TTL)
return {'ok'}
""".replace("END_TTL", str(END_TTL))

# KEYS: the stream of the entries (starts or resume).  ARGV: group, consumer, entry id...
# Acknowledges only the entries this consumer holds: an entry another VM took over after
# our lease expired is that VM's to acknowledge (a zombie's XACK would strand it).
# A stream whose group Redis lost (an AOF cut back) holds nothing: XPENDING's error counts as
# "not held" (pcall), here and in HAND_BACK and GIVE.
# Reply: {'ok', acknowledged count}.
ACK = """
local n = 0
for i = 3, #ARGV do
  local held = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if type(held) == 'table' and #held > 0 then
    n = n + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  end
end
return {'ok', n}
"""

# KEYS: the stream of the entries, the resume stream (or the pinned stream of the VM a chain
# is pinned to: the hand-over of a "pinned" claim).  ARGV: group, consumer, entry id...
# Gives entries this consumer holds back to the group: a fresh copy on the resume stream
# (read before new starts: they were read once already), then the original acknowledged
# (a consumer cannot un-read an entry; left pending, it would wait a whole lease for a
# takeover).  Entries it no longer holds are left alone.
# Reply: {'ok', handed back count}.
HAND_BACK = """
local n = 0
for i = 3, #ARGV do
  local held = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if type(held) == 'table' and #held > 0 then
    local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if #entry > 0 then redis.call('XADD', KEYS[2], '*', unpack(entry[1][2])) end
    n = n + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  end
end
return {'ok', n}
"""

# KEYS: the pinned stream of a VM, the resume stream, that VM's heartbeat, the pins set,
# then the chain of each entry.  ARGV: group, VM name, entry count n, n entry ids.
# The pin lapses with the VM's heartbeat: once it is gone, each entry whose chain still
# needs running (queued, or running under that VM, which is requeued as a takeover would)
# moves to the resume stream for any VM; the stream goes once empty.  A living VM keeps all.
# Reply: {'ok', moved count} or {'alive'}.
LAPSE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {'alive'} end
local n, moved = tonumber(ARGV[3]), 0
for i = 1, n do
  local id, key = ARGV[3 + i], KEYS[4 + i]
  if #redis.call('XRANGE', KEYS[1], id, id) > 0 then
    local st = redis.call('HMGET', key, 'status', 'owner', 'id')
    if st[1] == 'running' and st[2] == ARGV[2] then
      redis.call('HSET', key, 'status', 'queued', 'owner', '')
    end
    if st[1] == 'queued' or (st[1] == 'running' and st[2] == ARGV[2]) then
      redis.call('XADD', KEYS[2], '*', 'chain', st[3])
      moved = moved + 1
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
  end
end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[4], ARGV[2])
end
return {'ok', moved}
"""

# KEYS: the entry's stream.  ARGV: group, consumer, the consumer to give it to, entry id.
# An entry naming a chain another VM runs goes to that VM, if we hold it: its run may be
# the one this entry started (Redis forgot that VM's delivery and delivered it again, to
# us), and acknowledged by us the chain would have no entry.  That VM keeps it fresh with
# its chain, or, if it forgot the chain too, takes it up at its heartbeat (idle entries).
# Reply: {'ok', given count}.
GIVE = """
local held = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[4], ARGV[4], 1, ARGV[2])
if type(held) ~= 'table' or #held == 0 then return {'ok', 0} end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[4], 'JUSTID')
return {'ok', 1}
"""

# KEYS: the marker of this delivery (``Keyspace.applied`` of the first key + chain:step: it
# hashes to the keys' slot), then the effect keys of one slot.
# ARGV: msgpack effects (each key as its index in KEYS), mode ("check": only say whether they
# may apply; "apply"), the internal key prefix, the kernel prefix, the marker's lifetime (s).
# The outbox's delivery on a cluster (pyrecks/vm/outbox.py): applies a committed step's
# effects on the keys of one slot, all or none, at most once — the marker says they were.
# The same checks as COMMIT's (but for the kernels set, which lives in another slot).
# Reply: {'ok'}, {'applied'} (already, by this or another VM) or {'rejected', reason}.
APPLY = (
    _EFFECT_CHECK
    + """
local mode = ARGV[2]
if mode == 'apply' and redis.call('EXISTS', KEYS[1]) == 1 then return {'applied'} end
local effects = cmsgpack.unpack(ARGV[1])
for _, e in ipairs(effects) do
  local why = effect_problem(e, KEYS[tonumber(e[2])], ARGV[3], ARGV[4], nil)
  if why then
    if mode == 'apply' then redis.call('SET', KEYS[1], 'rejected', 'EX', ARGV[5]) end
    return {'rejected', why}
  end
end
if mode ~= 'apply' then return {'ok'} end
for _, e in ipairs(effects) do
  redis.call(e[1], KEYS[tonumber(e[2])], unpack(e, 3))
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[5])
return {'ok'}
"""
)

# KEYS: chain, its shard's outbox, its end stream.  ARGV: chain id, the step whose effects
# were delivered.
# The outbox entry of a delivered step goes (not a later step's: fenced on owed_step).  A
# chain that has ended gets a second entry on its end stream: waiters (Pyrecks.wait) return
# only once its last step's effects have landed.
# Reply: {'ok'}.
DELIVERED = """
if redis.call('HGET', KEYS[1], 'owed_step') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'owed', 'owed_step')
  local st = redis.call('HGET', KEYS[1], 'status')
  if st == 'done' or st == 'failed' or st == 'cancelled' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'status', st)
    redis.call('EXPIRE', KEYS[3], END_TTL)
  end
end
if redis.call('HEXISTS', KEYS[1], 'owed') == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return {'ok'}
""".replace("END_TTL", str(END_TTL))

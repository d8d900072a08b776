"""Lua scripts behind every state change of a job.

Each transition reads the record's ``status`` and writes the new one in the same script,
so Redis runs it as one atomic step: two workers holding the same job (a re-delivery
after a stall) cannot both store a result, a cancel cannot be lost between a worker's
check and its update, and the queue-length limit cannot be overshot by concurrent
submits. Every script checks that the record exists before writing it, because an HSET on
an expired key would recreate it without a TTL.

Every state change ends with ``refresh``: a record lives a full ``job_ttl_seconds`` after
its *last* change (not after its submission, which would expire a job that waited long in
the queue while it runs), and the keys that refer to it (cancel flag, idempotency
mapping) never outlive it; its blobs are the sweeper's (:mod:`service.storage.lifecycle`).

Every transition to a final state also calls ``notify``: a job with a ``webhook_url`` gets
its notification queued in the ``webhooks`` due-set (always the script's last key) in the
same atomic step, so no crash between the two can lose it (:mod:`service.queue.webhooks`).

Keys always arrive through ``KEYS`` (built by :mod:`service.queue.keys`); state names are
substituted from :class:`JobState` so that neither is spelled twice. Field names are the
:class:`JobRecord` field names. Lua numbers lose precision when returned, so scripts
return strings, integers or the record's HGETALL.
"""

from __future__ import annotations

from string import Template
from typing import Final

from service.queue.jobs import FIELD_LAST_ERROR, JobState, WebhookStatus
from service.queue.keys import STAT_JOB_SECONDS, STAT_SECONDS_PER_MEGAPIXEL

#: Weight of the newest job in the moving average of job run times (for Retry-After).
EMA_WEIGHT: Final = 0.2

_PRELUDE = """
local QUEUED, RUNNING = '$queued', '$running'
local SUCCEEDED, FAILED, CANCELLED = '$succeeded', '$failed', '$cancelled'
local FINAL = {[SUCCEEDED] = true, [FAILED] = true, [CANCELLED] = true}

-- Acknowledge and delete a stream entry: the stream then only holds entries that still
-- wait or run, and XLEN stays small.
local function settle(stream, group, entry)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end

-- A delivery of a job that expired or already ended must change nothing: acknowledge its
-- stream entry (an expired job also leaves the queued index) and return 'expired' or the
-- final status. Returns nil while the job is live.
local function ended(job, queued, stream, group, entry, job_id)
  local status = redis.call('HGET', job, 'status')
  if status and not FINAL[status] then return nil end
  settle(stream, group, entry)
  if status then return status end
  redis.call('ZREM', queued, job_id)
  return 'expired'
end

-- Restart a job's TTL at a state change. Its other keys (cancel flag, idempotency
-- mapping) are written with a TTL no longer than this, before it, so none outlives it.
local function refresh(ttl, job)
  redis.call('EXPIRE', job, ttl)
end

-- A job with a webhook gets the notification of its final state queued in the same
-- atomic step as the transition, so no crash in between can lose it (NX: one per job).
local function notify(job, hooks, job_id, now)
  if redis.call('HEXISTS', job, 'webhook_url') == 0 then return end
  redis.call('HSET', job, 'webhook_status', '$webhook_pending')
  redis.call('ZADD', hooks, 'NX', now, job_id)
end

-- Append to the dead-letter stream, trimming entries older than the job TTL.
local function dead_letter(dead, min_id, job_id, entry, reason, attempts, consumer, now)
  redis.call('XADD', dead, 'MINID', '~', min_id, '*', 'job', job_id, 'entry', entry,
    'reason', reason, 'attempts', attempts, 'consumer', consumer, 'at', now)
end
"""


def _lua(body: str) -> str:
    return Template(_PRELUDE + body).substitute(
        queued=JobState.QUEUED.value,
        running=JobState.RUNNING.value,
        succeeded=JobState.SUCCEEDED.value,
        failed=JobState.FAILED.value,
        cancelled=JobState.CANCELLED.value,
        last_error=FIELD_LAST_ERROR,
        stat_job_seconds=STAT_JOB_SECONDS,
        stat_seconds_per_megapixel=STAT_SECONDS_PER_MEGAPIXEL,
        ema_weight=repr(EMA_WEIGHT),
        webhook_pending=WebhookStatus.PENDING.value,
    )


#: KEYS job, queued, stream (the model's), models[, idempotency]
#: ARGV job_id, now, ttl, max_queue_length, entry_field, group, model, field1, value1, ...
#: -> {'ok', entry_id} | {'duplicate', job_id} | {'full', depth}
SUBMIT: Final = _lua("""
local job_id, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_len = tonumber(ARGV[4])
local idem = KEYS[5]
if idem then
  local existing = redis.call('GET', idem)
  if existing then return {'duplicate', existing} end
end
-- Members older than the TTL belong to records that expired while queued: not counted.
local depth = redis.call('ZCOUNT', KEYS[2], now - ttl, '+inf')
if depth >= max_len then return {'full', depth} end
local mapping = {}
for i = 8, #ARGV do mapping[#mapping + 1] = ARGV[i] end
-- The first write: at maxmemory Redis refuses it (OOM), before anything has changed.
-- (Once a script has written, Redis lets its later writes through, so no write, not
-- even a trim, may come before this one.)
redis.call('HSET', KEYS[1], unpack(mapping))
-- The mapping before the record's TTL, so that the mapping never outlives the record.
if idem then redis.call('SET', idem, job_id, 'NX', 'EX', ttl) end
refresh(ttl, KEYS[1])
redis.call('SADD', KEYS[4], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2] - ttl)
redis.call('ZADD', KEYS[2], ARGV[2], job_id)
-- Entries older than the TTL belong to expired records too: trim them (exactly, since
-- approximate trimming never cuts a short stream). A pending entry is older than its
-- live record when the job was retried or handed back (that refreshed the record): the
-- trim stops at the oldest pending entry, or the job would never be delivered again.
local min_id = string.format('%d', math.max(0, math.floor((now - ttl) * 1000)))
local pending = redis.pcall('XPENDING', KEYS[3], ARGV[6])  -- an error before the group
if type(pending) == 'table' and pending[2] then
  local oldest = pending[2]
  if tonumber(string.match(oldest, '^%d+')) < tonumber(min_id) then min_id = oldest end
end
local entry = redis.call('XADD', KEYS[3], 'MINID', min_id, '*', ARGV[5], job_id)
return {'ok', entry}
""")

#: KEYS job, queued, stream, dead, cancel, webhooks
#: ARGV group, entry, job_id, max_attempts, now, consumer, min_dead_id, ttl
#: -> {'deliver', attempts} | {'expired'|'final'|'cancelled'|'dead', attempts}
DELIVER: Final = _lua("""
local group, entry, job_id = ARGV[1], ARGV[2], ARGV[3]
local max_attempts, now, ttl = tonumber(ARGV[4]), ARGV[5], ARGV[8]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  settle(KEYS[3], group, entry)
  redis.call('ZREM', KEYS[2], job_id)
  return {'expired', 0}
end
if FINAL[status] then
  settle(KEYS[3], group, entry)
  return {'final', 0}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  -- Cancelled while running, and that worker is gone: finish the cancel here.
  redis.call('HSET', KEYS[1], 'status', CANCELLED, 'finished_at', now)
  notify(KEYS[1], KEYS[6], job_id, now)
  redis.call('DEL', KEYS[5])
  redis.call('ZREM', KEYS[2], job_id)
  settle(KEYS[3], group, entry)
  refresh(ttl, KEYS[1])
  return {'cancelled', 0}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > max_attempts then
  local done = attempts - 1
  local reason = 'not acknowledged within the visibility timeout (worker lost or stalled)'
  local last = redis.call('HGET', KEYS[1], '$last_error')
  if last then reason = reason .. '; last error: ' .. last end
  local message = 'failed after ' .. done .. ' attempts: ' .. reason
  redis.call('HSET', KEYS[1], 'status', FAILED, 'error', message, 'finished_at', now,
    'attempts', done)
  notify(KEYS[1], KEYS[6], job_id, now)
  redis.call('ZREM', KEYS[2], job_id)
  dead_letter(KEYS[4], ARGV[7], job_id, entry, message, done, ARGV[6], now)
  settle(KEYS[3], group, entry)
  refresh(ttl, KEYS[1])
  return {'dead', done}
end
refresh(ttl, KEYS[1])
return {'deliver', attempts}
""")

#: KEYS job, queued, stream
#: ARGV group, entry, job_id, worker, engine, now, ttl
#: -> the record's HGETALL, or {} when the job must not run (final or expired; acked)
START: Final = _lua("""
local group, entry, job_id = ARGV[1], ARGV[2], ARGV[3]
if ended(KEYS[1], KEYS[2], KEYS[3], group, entry, job_id) then return {} end
redis.call('HSET', KEYS[1], 'status', RUNNING, 'started_at', ARGV[6], 'worker', ARGV[4],
  'engine', ARGV[5], 'tiles_done', 0)
redis.call('ZREM', KEYS[2], job_id)
refresh(ARGV[7], KEYS[1])
return redis.call('HGETALL', KEYS[1])
""")

#: KEYS stream; ARGV group, consumer, entry -> 1 when still ours (idle time reset), else 0
TOUCH: Final = _lua("""
local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
""")

#: KEYS job; ARGV done, total, ttl -> 1 when recorded (job running), else 0
PROGRESS: Final = _lua("""
if redis.call('HGET', KEYS[1], 'status') ~= RUNNING then return 0 end
redis.call('HSET', KEYS[1], 'tiles_done', ARGV[1], 'tiles_total', ARGV[2])
refresh(ARGV[3], KEYS[1])
return 1
""")

#: KEYS job, queued, stream, cancel, stats, webhooks
#: ARGV group, entry, job_id, now, timings_json, width, height, ttl
#: -> {'stored', params_json} when this call finished the job (its result is in the blob
#:    store already; the params name its uploads, for the broker to delete without
#:    listing the job's folder), else {current status} or {'expired'}
COMPLETE: Final = _lua("""
local group, entry, job_id, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local over = ended(KEYS[1], KEYS[2], KEYS[3], group, entry, job_id)
if over then return {over} end
redis.call('HSET', KEYS[1], 'status', SUCCEEDED, 'finished_at', ARGV[4],
  'timings', ARGV[5], 'width', ARGV[6], 'height', ARGV[7])
redis.call('HDEL', KEYS[1], 'error')
notify(KEYS[1], KEYS[6], job_id, ARGV[4])
local total = tonumber(redis.call('HGET', KEYS[1], 'tiles_total') or '0')
if total > 0 then redis.call('HSET', KEYS[1], 'tiles_done', total) end
redis.call('ZREM', KEYS[2], job_id)
redis.call('DEL', KEYS[4])
local started = tonumber(redis.call('HGET', KEYS[1], 'started_at'))
if started then
  local seconds = now - started
  local ema = tonumber(redis.call('HGET', KEYS[5], '$stat_job_seconds'))
  if ema then seconds = (1 - $ema_weight) * ema + $ema_weight * seconds end
  redis.call('HSET', KEYS[5], '$stat_job_seconds', tostring(seconds))
  local megapixels = tonumber(ARGV[6]) * tonumber(ARGV[7]) / 1e6
  if megapixels > 0 then
    local rate = (now - started) / megapixels
    local avg = tonumber(redis.call('HGET', KEYS[5], '$stat_seconds_per_megapixel'))
    if avg then rate = (1 - $ema_weight) * avg + $ema_weight * rate end
    redis.call('HSET', KEYS[5], '$stat_seconds_per_megapixel', tostring(rate))
  end
end
settle(KEYS[3], group, entry)
refresh(ARGV[8], KEYS[1])
return {'stored', redis.call('HGET', KEYS[1], 'params') or ''}
""")

#: KEYS job, queued, stream, dead, cancel, webhooks
#: ARGV group, entry, job_id, reason, retry(0|1), max_attempts, now, consumer,
#:      retry_idle_ms, min_dead_id, ttl
#: -> 'queued' (will be re-delivered), 'failed', the current final status, or 'expired'
FAIL: Final = _lua("""
local group, entry, job_id, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retry, max_attempts, now = ARGV[5] == '1', tonumber(ARGV[6]), ARGV[7]
local over = ended(KEYS[1], KEYS[2], KEYS[3], group, entry, job_id)
if over then return over end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if retry and attempts < max_attempts then
  redis.call('HSET', KEYS[1], 'status', QUEUED, '$last_error', reason,
    'error', 'attempt ' .. attempts .. ' failed, will retry: ' .. reason)
  -- Scored by this change, as its TTL: the queue drops members older than the TTL.
  redis.call('ZADD', KEYS[2], now, job_id)
  -- Keep the entry pending but age it, so that XAUTOCLAIM hands it out after the delay.
  redis.call('XCLAIM', KEYS[3], group, ARGV[8], 0, entry, 'IDLE', ARGV[9], 'JUSTID')
  refresh(ARGV[11], KEYS[1])
  return QUEUED
end
local message = reason
if retry then message = 'failed after ' .. attempts .. ' attempts: ' .. reason end
redis.call('HSET', KEYS[1], 'status', FAILED, 'error', message, '$last_error', reason,
  'finished_at', now)
notify(KEYS[1], KEYS[6], job_id, now)
redis.call('DEL', KEYS[5])
redis.call('ZREM', KEYS[2], job_id)
dead_letter(KEYS[4], ARGV[10], job_id, entry, message, attempts, ARGV[8], now)
settle(KEYS[3], group, entry)
refresh(ARGV[11], KEYS[1])
return FAILED
""")

#: KEYS job, queued, cancel, webhooks; ARGV job_id, now, ttl
#: -> the record's HGETALL after the call, or {} when unknown
CANCEL: Final = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {} end
if status == QUEUED then
  -- Its stream entry stays: the worker that receives it acks and skips it.
  redis.call('HSET', KEYS[1], 'status', CANCELLED, 'finished_at', ARGV[2])
  notify(KEYS[1], KEYS[4], ARGV[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  refresh(ARGV[3], KEYS[1])
elseif status == RUNNING then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
  refresh(ARGV[3], KEYS[1])
end
return redis.call('HGETALL', KEYS[1])
""")

#: KEYS job, queued, stream, cancel, webhooks; ARGV group, entry, job_id, now, ttl
#: -> the record's HGETALL after the call, or {} when expired
MARK_CANCELLED: Final = _lua("""
local group, entry, job_id = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', KEYS[1], 'status')
if status and not FINAL[status] then
  redis.call('HSET', KEYS[1], 'status', CANCELLED, 'finished_at', ARGV[4])
  notify(KEYS[1], KEYS[5], job_id, ARGV[4])
  refresh(ARGV[5], KEYS[1])
end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[2], job_id)
settle(KEYS[3], group, entry)
if not status then return {} end
return redis.call('HGETALL', KEYS[1])
""")

#: KEYS job, queued, stream; ARGV group, entry, job_id, consumer, idle_ms, now, ttl
#: -> 'queued' (handed back), the current final status, or 'expired'
RELEASE: Final = _lua("""
local group, entry, job_id = ARGV[1], ARGV[2], ARGV[3]
local over = ended(KEYS[1], KEYS[2], KEYS[3], group, entry, job_id)
if over then return over end
-- The attempt did not fail: give back the delivery it was counted for.
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
redis.call('HSET', KEYS[1], 'status', QUEUED, 'attempts', math.max(0, attempts - 1),
  'tiles_done', 0)
redis.call('HDEL', KEYS[1], 'started_at', 'worker', 'engine')
-- Scored by this change, as its TTL: the queue drops members older than the TTL.
redis.call('ZADD', KEYS[2], ARGV[6], job_id)
-- Idle for the whole visibility timeout: the next receive of any worker takes it over.
redis.call('XCLAIM', KEYS[3], group, ARGV[4], 0, entry, 'IDLE', ARGV[5], 'JUSTID')
refresh(ARGV[7], KEYS[1])
return QUEUED
""")

#: KEYS cost; ARGV megapixels, limit, ttl -> 'ok' (charged) or the megapixels already used
CHARGE: Final = _lua("""
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return tostring(used) end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 'ok'
""")

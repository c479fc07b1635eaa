"""Priorities as queues: each level of the cpu and gpu queues is a queue of its own (`gpu.high`,
`gpu`, `gpu.low`), which workers consume in that order (`queue_order_strategy: priority`: the
Redis transport BRPOPs its lists in a fixed order, so a waiting high message is always taken
first). Celery's documentation calls per-message priorities on Redis approximate and advises
separate queues; RabbitMQ gets the same queues.

Starvation guard: jobs are promoted by age. On the reaper's pass, a message whose job is older than
`priority_promote_after_s` (T) moves from low to normal, and one older than 2T from normal to
high, to the consuming end of its new queue (it waited longer than everything there): under a
steady stream of high jobs a low or normal one still runs once it is 2T old. A message older than
2T climbs both levels in one pass, so each later stage of an old job (its chain sends it to its own
level again) waits at most one reaper pass (`reaper_interval_s`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable

import redis

log = logging.getLogger(__name__)

LEVELS = ("high", "normal", "low")  # highest first
PRIORITISED = ("cpu", "gpu")  # the io queue (webhooks) has one level
JOB_CREATED_HEADER = "pixelmill_job_created"  # on every stage message: how old the job is


def queue_for(base: str, level: str) -> str:
    """The queue of ``base`` (a routing policy's answer) at ``level``; a queue that is not one of
    the prioritised ones (io, or a custom route) has one level."""
    if base not in PRIORITISED or level == "normal":
        return base
    return f"{base}.{level}"


def levels_of(base: str) -> list[str]:
    """``base``'s queues, highest first."""
    return [queue_for(base, level) for level in LEVELS] if base in PRIORITISED else [base]


def all_queues(bases: Iterable[str]) -> list[str]:
    return [queue for base in bases for queue in levels_of(base)]


def consume_order(queues: Iterable[str]) -> list[str]:
    """The queues a worker consumes, in order: a base it names (`cpu`) stands for all its levels;
    a level it names (`cpu.high`, a worker kept for urgent work) stays alone. Every high queue
    comes first, then the normal ones, then the low ones."""
    named = [q for name in queues for q in levels_of(name)]
    return sorted(dict.fromkeys(named), key=lambda q: LEVELS.index(_level_of(q)))


def _level_of(queue: str) -> str:
    base, _, level = queue.rpartition(".")
    return level if base in PRIORITISED and level in LEVELS else "normal"


def base_of(queue: str) -> str:
    """`gpu` for `gpu.high`, `gpu` and `gpu.low`; any other queue is its own base."""
    base, _, level = queue.rpartition(".")
    return base if base in PRIORITISED and level in LEVELS else queue


def level_allowed(asked: str, highest: str) -> bool:
    return LEVELS.index(asked) >= LEVELS.index(highest)


# Move the messages at the consuming end of KEYS[1] (a lower level's list; kombu LPUSHes and
# BRPOPs, so the right end is the oldest) whose job is older than ARGV[1] to the consuming end of
# KEYS[2], the next level up: they have waited longer than anything there. It stops at the first
# younger one, so a pass costs what it moves, not the length of the queue.
_PROMOTE = """
local moved = {}
while true do
  local raw = redis.call('LINDEX', KEYS[1], -1)
  if not raw then break end
  local ok, message = pcall(cjson.decode, raw)
  local created = ok and type(message) == 'table' and type(message.headers) == 'table'
                  and tonumber(message.headers[ARGV[2]])
  if not created or created >= tonumber(ARGV[1]) then break end
  table.insert(moved, redis.call('RPOP', KEYS[1]))
end
for i = #moved, 1, -1 do redis.call('RPUSH', KEYS[2], moved[i]) end  -- the oldest ends up next
return #moved
"""


def promote_aged(client: redis.Redis, *, older_than_s: float, now: float | None = None) -> dict[str, int]:
    """One pass of the starvation guard on a Redis broker: {queue: messages moved up from it}."""
    now = now if now is not None else time.time()
    script = client.register_script(_PROMOTE)
    moved: dict[str, int] = {}
    steps = (("normal", "high", 2 * older_than_s), ("low", "normal", older_than_s),
             ("normal", "high", 2 * older_than_s))  # again: what just left low older than 2T goes on to high
    for base in PRIORITISED:  # a job older than T leaves low, one older than 2T leaves normal
        for lower, upper, age in steps:
            source, target = queue_for(base, lower), queue_for(base, upper)
            count = int(script(keys=[source, target], args=[now - age, JOB_CREATED_HEADER]))
            if count:
                moved[source] = moved.get(source, 0) + count
                log.info("priority: %d job(s) older than %.0f s in %s; moved up to %s", count, age, source, target)
    return moved


def job_of(raw: bytes) -> str | None:
    """The job id a stage message carries (its only argument), for tests and tools."""
    try:
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        return body[0][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None

"""One change of a job's state as one server-side script: a compare-and-set on the job's record
plus every write that goes with it (events, metrics, live updates), in one round trip.

The job store computes the new record in Python from the record it read; the script writes it
only if the record is still that one (its SHA-1 compared on the server), and otherwise answers the
current record so the store can make the change again on it — optimistic concurrency, as a
WATCH/MULTI transaction gives, without its four round trips. The other writes are recorded on a
``Writes`` (it takes the same calls as a redis-py pipeline) and run by the script after the record.

Counters (the service metrics: ``tasks.metrics``) travel apart from the other writes, as groups of
hashes that take the same increments (``Writes.add_counts``): a job's end adds some forty fields to
four hashes, and as commands each would be a JSON array the script decodes and a float increment
(HINCRBYFLOAT costs Redis about three times an HINCRBY: the sums are whole micro-units).

Webhook events are written only when someone may want them: a listener key (the tenant's
standing endpoints, the job's or its batch's subscription) exists at that moment. A job nobody
listens to puts nothing in the outbox and wakes no io worker.

The script writes keys it is not given as KEYS (the outbox, metrics, channels): it needs one Redis
server (with replicas if wanted), as the rest of the job store does, not Redis Cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.commands.core import CoreCommands

ALWAYS, LISTENED, COMPLETES_BATCH, COMPLETES = "a", "l", "b", "c"

# KEYS[1]: the job's record.
# ARGV[1]: SHA-1 of the record the change was computed from; ARGV[2]: the new record;
# ARGV[3..6]: the batch's done-set, this job's id, the batch's size and the set's TTL ('' when
#   the job is not ending as part of a batch);
# ARGV[7]: the listener keys, ARGV[8]: the other writes, each as [when, command, arguments…]
#   (both JSON arrays); when: 'a' always, 'l' if a listener key exists, 'c' if this job is the one that
#   completes its batch, 'b' if a listener key exists and this
#   job is the one that completes its batch. An argument {"around": before, "after": after} is
#   text around the new record: before .. record .. after (a live message, an event's snapshot);
#   with "quoted": true, around the record as a JSON string, ARGV[10] (a stage message's header);
# ARGV[9]: counters, a JSON array of [[hash keys…], [field, amount, field, amount…]]: each amount is
#   added to its field in every key of its group, by HINCRBY (a number) or HINCRBYFLOAT (a string);
# ARGV[10]: the new record as a JSON string literal ('' when no argument is quoted).
# Returns {0} (no such job), {1, current record} (it changed meanwhile) or {2, listened 0|1,
# errors…}: the other writes go through pcall, so a metric or a live update that fails is
# reported, never half-undoes the state change.
_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current then return {0} end
if redis.sha1hex(current) ~= ARGV[1] then return {1, current} end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
local completes = false
if ARGV[3] ~= '' and redis.call('SADD', ARGV[3], ARGV[4]) == 1 then
  redis.call('EXPIRE', ARGV[3], ARGV[6])
  completes = redis.call('SCARD', ARGV[3]) == tonumber(ARGV[5])
end
local listened = 0
for _, key in ipairs(cjson.decode(ARGV[7])) do
  if redis.call('EXISTS', key) == 1 then listened = 1 break end
end
local answer = {2, listened}
for _, command in ipairs(cjson.decode(ARGV[8])) do
  local when = command[1]
  if when == 'a' or (when == 'c' and completes) or (listened == 1 and (when == 'l' or completes)) then
    for j = 3, #command do
      local arg = command[j]
      if type(arg) == 'table' then command[j] = arg.around .. (arg.quoted and ARGV[10] or ARGV[2]) .. arg.after end
    end
    local reply = redis.pcall(unpack(command, 2))
    if type(reply) == 'table' and reply.err then table.insert(answer, command[2] .. ': ' .. reply.err) end
  end
end
for _, group in ipairs(cjson.decode(ARGV[9])) do
  local fields = group[2]
  for _, key in ipairs(group[1]) do
    for i = 1, #fields, 2 do
      local amount = fields[i + 1]
      local reply = redis.pcall(type(amount) == 'string' and 'HINCRBYFLOAT' or 'HINCRBY', key, fields[i], amount)
      if type(reply) == 'table' and reply.err then table.insert(answer, key .. ' ' .. fields[i] .. ': ' .. reply.err) end
    end
  end
end
return answer
"""


class Writes(CoreCommands):
    """Redis commands recorded instead of sent, for the transition script to run after the
    record: the helpers that add to a transition (``tasks.events``, ``tasks.metrics``,
    ``tasks.live``) call it as they would a pipeline."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []
        self.counts: dict[tuple[str, ...], dict[str, int | float]] = {}  # hash keys → field → amount
        self.listener_keys: list[str] = []
        self.batch_done: tuple[str, str, int, int] | None = None  # (done-set, job id, batch size, ttl)
        self._when = ALWAYS

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.commands.append((self._when, args))

    @contextmanager
    def when(self, condition: str) -> Iterator["Writes"]:
        """Record the commands of the block to run only if someone listens (``LISTENED``), only if
        someone listens and this job is the last of its batch to end (``COMPLETES_BATCH``), or only if
        it is the last, listened to or not (``COMPLETES``)."""
        outer, self._when = self._when, condition
        try:
            yield self
        finally:
            self._when = outer

    def add_counts(self, keys: tuple[str, ...], amounts: dict[str, int | float]) -> None:
        """Add each amount to its field of every hash in ``keys`` (HINCRBY for an int,
        HINCRBYFLOAT for a float), whenever the record is written; the same field added twice
        to a group is sent once."""
        group = self.counts.setdefault(keys, {})
        for name, amount in amounts.items():
            group[name] = group.get(name, 0) + amount

    def args(self, record: bytes) -> list[Any]:
        """ARGV[3:] of the script, for the new ``record``. The commands travel as one JSON array
        (decoded on the server): far cheaper to send than a few dozen separate arguments."""
        done_set, job_id, size, ttl = self.batch_done or ("", "", 0, 0)
        commands = [[when, *(arg if type(arg) is str else _text(arg) for arg in command)]
                    for when, command in self.commands]
        counts = [[keys, [x for name, amount in fields.items()
                          for x in (name, amount if type(amount) is int else repr(amount))]]
                  for keys, fields in self.counts.items()]
        quoted = any(type(arg) is AroundRecord and arg.quoted for _, command in self.commands for arg in command)
        return [done_set, job_id, size, ttl, orjson.dumps(self.listener_keys), orjson.dumps(commands),
                orjson.dumps(counts), quote(record) if quoted else ""]  # ARGV[10] only when a command takes it


@dataclass(frozen=True)
class AroundRecord:
    """A command argument that the script completes with the record it writes: the text
    ``before`` + record + ``after``. A message that carries the job (a live update, an event's
    snapshot, a stage's message) is so never serialised twice, nor escaped into the script's
    arguments. ``quoted``: the record goes in as a JSON string (``quote``, made once per
    transition) — a stage message's header, which kombu and Celery then decode, copy and pickle
    as one string instead of an object of some sixty members (~50 µs less a message)."""

    before: str
    after: str = "}"
    quoted: bool = False

    @classmethod
    def member(cls, head: dict[str, Any], field: str) -> "AroundRecord":
        """The JSON object ``head`` with one more member, ``field``, whose value is the record."""
        text = orjson.dumps(head).decode()
        return cls(f'{text[:-1]}{"," if head else ""}"{field}":')


def quote(record: bytes) -> bytes:
    """``record`` (UTF-8 JSON) as a JSON string literal: what ``AroundRecord(quoted=True)`` inserts."""
    return orjson.dumps(record.decode())


def _text(arg: Any) -> str | dict[str, str]:
    """A command argument for the script: the string Redis would receive (as redis-py encodes it),
    or ``{"around": before, "after": after}`` for an ``AroundRecord``."""
    if isinstance(arg, str):
        return arg
    if isinstance(arg, AroundRecord):
        return {"around": arg.before, "after": arg.after, **({"quoted": True} if arg.quoted else {})}
    if isinstance(arg, bytes):
        return arg.decode()
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return repr(arg)
    raise TypeError(f"a transition's writes take str, bytes, int, float or AroundRecord arguments, "
                    f"not {type(arg).__name__}")


@dataclass(frozen=True)
class CasResult:
    applied: bool
    listened: bool = False
    current: bytes | None = None  # when not applied: the record as it is now (None: no such job)
    errors: tuple[str, ...] = ()  # the other writes that failed (the record was written)


Change = Callable[[bytes], tuple[bytes, Writes]]


class Transition:
    """The script, registered once per client (redis-py loads it again after a server restart).
    Every read-modify-write of a record in our stores (jobs, webhook endpoints and deliveries)
    goes through ``compare_and_set``; a stage's start may go through ``send`` instead, its answer
    read behind the next transition of the job (``follow``)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._loaded = False  # by send(): whether this client has loaded the script (EVALSHA needs it)

    def compare_and_set(self, key: str, change: Change, *, base: bytes | None = None) -> CasResult | None:
        """Make ``change`` (the record as read → the new record and the writes that go with it)
        and write it if the record is still the one it was made from, else make it again on the
        current record. Starts from ``base`` when the caller knows the record; None: no such key."""
        if base is None:
            base = self._client.get(key)
        while base is not None:
            new, writes = change(base)
            result = self.apply(key, base, new, writes)
            if result.applied:
                return result
            base = result.current
        return None

    def apply(self, key: str, base: bytes, new: bytes, writes: Writes) -> CasResult:
        return _result(self._script(keys=[key], args=_args(base, new, writes)))

    def send(self, key: str, base: bytes, new: bytes, writes: Writes) -> "Sent":
        """Send one compare-and-set without waiting for its answer: Redis runs it while the caller
        goes on, and a second transition sent behind it on the same connection (``follow``) reads
        both answers in one wait — a round trip's worth of waiting less (~55 µs of CPU on this
        machine's kernel, and its latency). The connection stays the caller's until then."""
        if not self._loaded:
            self._client.script_load(_SCRIPT)  # EVALSHA below cannot load it itself
            self._loaded = True
        pool = self._client.connection_pool
        sent = Sent(pool, pool.get_connection())
        sent.send("EVALSHA", self._script.sha, 1, key, *_args(base, new, writes))
        return sent

    def follow(self, sent: "Sent", key: str, base: bytes, new: bytes, writes: Writes) -> tuple[CasResult, CasResult]:
        """Send a compare-and-set behind ``sent`` on its connection, then read both answers:
        Redis runs them in that order, so the second, made on the record the first writes, is
        applied only if the first was."""
        sent.send("EVALSHA", self._script.sha, 1, key, *_args(base, new, writes))
        first = sent.read(then_keep=True)
        return first, sent.read()

    def forget_script(self) -> None:
        """The server answered NOSCRIPT (restarted, or its scripts flushed): load it again before the next send."""
        self._loaded = False


class Sent:
    """A transition sent on a connection of its own, its answer not read yet (``Transition.send``)."""

    def __init__(self, pool: redis.ConnectionPool, connection: Any) -> None:
        self._pool, self.connection = pool, connection

    def send(self, *command: Any) -> None:
        """Send a command on the connection (closed on any error, as ``read``)."""
        try:
            self.connection.send_command(*command)
        except BaseException:
            self.drop()
            raise

    def read(self, *, then_keep: bool = False) -> CasResult:
        """The next answer on the connection; the connection goes back to its pool after the last
        one (or is closed, on any error: answers left unread would answer the next caller)."""
        try:
            answer = self.connection.read_response()
        except BaseException:
            self.drop()
            raise
        if not then_keep:
            self._pool.release(self.connection)
        return _result(answer)

    def drop(self) -> None:
        self.connection.disconnect()
        self._pool.release(self.connection)


def _args(base: bytes, new: bytes, writes: Writes) -> list[Any]:
    return [hashlib.sha1(base).hexdigest(), new, *writes.args(new)]


def _result(answer: list[Any]) -> CasResult:
    if answer[0] == 2:
        return CasResult(applied=True, listened=bool(answer[1]),
                         errors=tuple(e.decode(errors="replace") for e in answer[2:]))
    return CasResult(applied=False, current=answer[1] if answer[0] == 1 else None)

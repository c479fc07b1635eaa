"""The webhook store on Redis: endpoints, subscriptions, deliveries, the dead-letter list and
the schedule of pending attempts. Every key comes from ``webhook_key`` (``pixelmill:webhook:…``).

Endpoints have no TTL (tenant configuration); subscriptions and deliveries live as long as
jobs do. Updates that read-modify-write go through the job store's compare-and-set
(``tasks.transition``), with the index writes that go with them.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable

import redis

from tasks.transition import Transition, Writes
from tasks.webhooks.models import Delivery, Endpoint, Subscription, normalise_url

PREFIX = "pixelmill"
ENDPOINT_DELIVERIES_KEPT = 1000
DEAD_KEPT = 10_000

# KEYS: the endpoint's in-flight set. ARGV: now, expiry, token, limit.
_ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[2]) * 1000))
  return 1
end
return 0
"""


def webhook_key(kind: str, *parts: str) -> str:
    """Every Redis key of the webhook store: ``pixelmill:webhook:<kind>:<parts…>``."""
    return ":".join((PREFIX, "webhook", kind, *parts))


def listener_keys(tenant: str, job_id: str, batch_id: str | None) -> list[str]:
    """The keys whose existence means a webhook may want a job's events: the tenant's standing
    endpoints, the job's own subscription and its batch's (``tasks.webhooks.dispatch.targets``
    reads the same three)."""
    keys = [webhook_key("standing", tenant), webhook_key("subscription", job_id)]
    if batch_id:
        keys.append(webhook_key("subscription", batch_id))
    return keys


def url_digest(url: str) -> str:
    """The key part of a URL's index entry: two spellings of one URL (tasks.webhooks.models.normalise_url)
    share it."""
    return hashlib.sha256(normalise_url(url).encode()).hexdigest()[:32]


class WebhookStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._acquire_slot = client.register_script(_ACQUIRE_SLOT)
        self._transition = Transition(client)

    # --- endpoints -------------------------------------------------------------------------
    def create_endpoint(self, endpoint: Endpoint, *, max_standing: int | None = None) -> Endpoint | None:
        """Write a new endpoint with its indexes. A standing one is refused (None) when the tenant
        already has ``max_standing`` of them: counted and written in one transaction, so parallel
        requests cannot go past the cap."""
        standing = webhook_key("standing", endpoint.tenant)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    if endpoint.standing and max_standing is not None:
                        pipe.watch(standing)
                        if pipe.scard(standing) >= max_standing:
                            return None
                    pipe.multi()
                    pipe.set(webhook_key("endpoint", endpoint.id), _dumps(endpoint.to_dict()))
                    pipe.zadd(webhook_key("endpoints", endpoint.tenant), {endpoint.id: endpoint.created_at})
                    if endpoint.standing:
                        pipe.sadd(standing, endpoint.id)
                    pipe.set(webhook_key("url", endpoint.tenant, url_digest(endpoint.url)), endpoint.id)
                    pipe.execute()
                    return endpoint
                except redis.WatchError:
                    continue

    def count_standing(self, tenant: str) -> int:
        return self.redis.scard(webhook_key("standing", tenant))

    def fetch_endpoint(self, endpoint_id: str) -> Endpoint | None:
        raw = self.redis.get(webhook_key("endpoint", endpoint_id))
        return Endpoint.from_dict(json.loads(raw)) if raw else None

    def fetch_endpoints(self, ids: list[str]) -> list[Endpoint]:
        if not ids:
            return []
        raws = self.redis.mget([webhook_key("endpoint", i) for i in ids])
        return [Endpoint.from_dict(json.loads(raw)) for raw in raws if raw]

    def list_endpoints(self, tenant: str) -> list[Endpoint]:
        ids = [i.decode() for i in self.redis.zrevrange(webhook_key("endpoints", tenant), 0, -1)]
        return self.fetch_endpoints(ids)

    def standing_endpoints(self, tenant: str) -> list[Endpoint]:
        return self.fetch_endpoints(sorted(i.decode() for i in self.redis.smembers(webhook_key("standing", tenant))))

    def endpoint_for_url(self, tenant: str, url: str) -> Endpoint | None:
        endpoint_id = self.redis.get(webhook_key("url", tenant, url_digest(url)))
        endpoint = self.fetch_endpoint(endpoint_id.decode()) if endpoint_id else None
        same = endpoint is not None and normalise_url(endpoint.url) == normalise_url(url)
        return endpoint if same else None

    def update_endpoint(self, endpoint_id: str, change: Callable[[Endpoint], None]) -> Endpoint | None:
        endpoint: Endpoint

        def make(raw: bytes) -> tuple[bytes, Writes]:
            nonlocal endpoint
            endpoint = Endpoint.from_dict(json.loads(raw))
            change(endpoint)
            return _dumps(endpoint.to_dict()).encode(), Writes()

        done = self._transition.compare_and_set(webhook_key("endpoint", endpoint_id), make)
        return endpoint if done else None

    def delete_endpoint(self, endpoint: Endpoint) -> None:
        url_key = webhook_key("url", endpoint.tenant, url_digest(endpoint.url))
        with self.redis.pipeline() as pipe:
            pipe.delete(webhook_key("endpoint", endpoint.id))
            pipe.zrem(webhook_key("endpoints", endpoint.tenant), endpoint.id)
            pipe.srem(webhook_key("standing", endpoint.tenant), endpoint.id)
            pipe.execute()
        if self.redis.get(url_key) == endpoint.id.encode():
            self.redis.delete(url_key)

    # --- subscriptions (a job's or a batch's own webhook) -------------------------------------
    def save_subscription(self, subject_id: str, subscription: Subscription) -> None:
        data = {"endpoint_id": subscription.endpoint_id, "events": list(subscription.events)}
        self.redis.set(webhook_key("subscription", subject_id), _dumps(data), ex=self.ttl_s)

    def fetch_subscription(self, subject_id: str | None) -> Subscription | None:
        raw = self.redis.get(webhook_key("subscription", subject_id)) if subject_id else None
        if raw is None:
            return None
        data = json.loads(raw)
        return Subscription(endpoint_id=data["endpoint_id"], events=tuple(data["events"]))

    # --- deliveries ----------------------------------------------------------------------------
    def create_delivery(self, delivery: Delivery) -> bool:
        """Write a new delivery with its indexes, atomically; False if it already exists."""
        key = webhook_key("delivery", delivery.id)
        order = webhook_key("order", delivery.subject, delivery.endpoint_id)
        by_subject = webhook_key("subject", delivery.subject)
        by_endpoint = webhook_key("endpoint-deliveries", delivery.endpoint_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        return False
                    pipe.multi()
                    pipe.set(key, _dumps(delivery.to_dict()), ex=self.ttl_s)
                    for list_key in (order, by_subject):
                        pipe.rpush(list_key, delivery.id)
                        pipe.expire(list_key, self.ttl_s)
                    pipe.zadd(by_endpoint, {delivery.id: delivery.created_at})
                    pipe.zremrangebyrank(by_endpoint, 0, -ENDPOINT_DELIVERIES_KEPT - 1)
                    pipe.zadd(webhook_key("pending"), {delivery.id: delivery.next_attempt_at})
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def fetch_delivery(self, delivery_id: str) -> Delivery | None:
        raw = self.redis.get(webhook_key("delivery", delivery_id))
        return Delivery.from_dict(json.loads(raw)) if raw else None

    def fetch_deliveries(self, ids: list[str]) -> list[Delivery]:
        if not ids:
            return []
        raws = self.redis.mget([webhook_key("delivery", i) for i in ids])
        return [Delivery.from_dict(json.loads(raw)) for raw in raws if raw]

    def update_delivery(self, delivery_id: str, change: Callable[[Delivery], None]) -> Delivery | None:
        """Change a delivery and keep the pending schedule and the dead-letter list in step."""
        delivery: Delivery

        def make(raw: bytes) -> tuple[bytes, Writes]:
            nonlocal delivery
            delivery = Delivery.from_dict(json.loads(raw))
            change(delivery)
            writes, dead = Writes(), webhook_key("dead", delivery.tenant)
            if delivery.status == "pending":
                writes.zadd(webhook_key("pending"), {delivery.id: delivery.next_attempt_at})
                writes.zrem(dead, delivery.id)
            else:
                writes.zrem(webhook_key("pending"), delivery.id)
            if delivery.status == "dead":
                writes.zadd(dead, {delivery.id: delivery.dead_at or time.time()})
                writes.zremrangebyrank(dead, 0, -DEAD_KEPT - 1)
            return _dumps(delivery.to_dict()).encode(), writes

        done = self._transition.compare_and_set(webhook_key("delivery", delivery_id), make)
        return delivery if done else None

    def deliveries_for_subject(self, subject_id: str) -> list[Delivery]:
        ids = [i.decode() for i in self.redis.lrange(webhook_key("subject", subject_id), 0, -1)]
        return self.fetch_deliveries(ids)

    def deliveries_for_endpoint(self, endpoint_id: str, *, limit: int = 100) -> list[Delivery]:
        ids = [i.decode() for i in self.redis.zrevrange(webhook_key("endpoint-deliveries", endpoint_id), 0, limit - 1)]
        return self.fetch_deliveries(ids)

    def dead_letters(self, tenant: str, *, limit: int = 100) -> list[Delivery]:
        ids = [i.decode() for i in self.redis.zrevrange(webhook_key("dead", tenant), 0, limit - 1)]
        found = self.fetch_deliveries(ids)
        gone = set(ids) - {d.id for d in found}
        if gone:  # expired with their job: drop them from the list
            self.redis.zrem(webhook_key("dead", tenant), *gone)
        return [d for d in found if d.status == "dead"]

    def neighbours(self, delivery: Delivery) -> tuple[Delivery | None, Delivery | None]:
        """The deliveries of the same subject to the same endpoint just before and after this one."""
        ids = [i.decode() for i in self.redis.lrange(webhook_key("order", delivery.subject, delivery.endpoint_id), 0, -1)]
        if delivery.id not in ids:
            return None, None
        at = ids.index(delivery.id)
        before = self.fetch_delivery(ids[at - 1]) if at > 0 else None
        after = self.fetch_delivery(ids[at + 1]) if at + 1 < len(ids) else None
        return before, after

    def postpone(self, delivery_id: str, *, until: float) -> None:
        """Move a waiting delivery's place in the schedule (the sweep leaves it alone till then)."""
        self.redis.zadd(webhook_key("pending"), {delivery_id: until}, xx=True)

    def due(self, *, before: float, limit: int = 500) -> list[str]:
        """Pending deliveries whose time is long past: their task message may have been lost."""
        return [i.decode() for i in self.redis.zrangebyscore(webhook_key("pending"), "-inf", before, start=0, num=limit)]

    # --- coordination --------------------------------------------------------------------------
    def lock_attempt(self, delivery_id: str, *, ttl_s: float) -> redis.lock.Lock | None:
        lock = self.redis.lock(webhook_key("lock", delivery_id), timeout=ttl_s)
        return lock if lock.acquire(blocking=False) else None

    def acquire_slot(self, endpoint_id: str, *, limit: int, ttl_s: float) -> str | None:
        """One of ``limit`` in-flight slots of an endpoint (each expires after ``ttl_s``)."""
        token = uuid.uuid4().hex
        now = time.time()
        ok = self._acquire_slot(keys=[webhook_key("inflight", endpoint_id)], args=[now, now + ttl_s, token, limit])
        return token if ok else None

    def release_slot(self, endpoint_id: str, token: str) -> None:
        self.redis.zrem(webhook_key("inflight", endpoint_id), token)

    def once_every(self, name: str, *, seconds: int) -> bool:
        """True at most once per ``seconds`` across every process (for the sweep)."""
        return bool(self.redis.set(webhook_key("once", name), "1", nx=True, ex=seconds))


def _dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))

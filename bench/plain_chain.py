"""The baseline of the orchestration benchmark: a plain Celery chain of four no-op tasks, with
the same Celery settings as pixelmill's (acks late, prefetch 1, the same transport options) on
the same Redis server (its own database). The last task marks the chain done in Redis."""

from __future__ import annotations

import os

import redis
from celery import Celery, chain

from tasks.celery_app import celery_config
from tasks.settings import get_settings

BROKER = os.environ.get("PLAIN_CHAIN_BROKER", "redis://127.0.0.1:6379/1")

app = Celery("plain")
app.conf.update({**celery_config(get_settings()), "broker_url": BROKER, "worker_send_task_events": False,
                 "task_send_sent_event": False})
_client = redis.Redis.from_url(BROKER)


@app.task(name="plain.noop")
def noop(chain_id: str, last: bool = False) -> None:
    if last:
        _client.set(f"plain:done:{chain_id}", 1, ex=600)


def enqueue(chain_id: str) -> None:
    """Four immutable signatures carrying only an id, as pixelmill's chains do."""
    chain(noop.si(chain_id).set(queue="cpu"), noop.si(chain_id).set(queue="cpu"),
          noop.si(chain_id).set(queue="cpu"), noop.si(chain_id, last=True).set(queue="cpu")).apply_async()


def is_done(chain_ids: list[str]) -> list[bool]:
    return [bool(v) for v in _client.mget([f"plain:done:{i}" for i in chain_ids])]
